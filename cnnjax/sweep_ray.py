"""A sweep's runs as Ray tasks, for sweeps that outgrow one machine (`python -m cnnjax.sweep --ray=ADDRESS`).

Each unfinished run is a task asking the cluster for its slot (`num_gpus=K`, `resources={"TPU": K}`, or K CPUs); on
the node Ray picks, the task starts `python -m cnnjax.main` with the environment `slots.environment` builds from the
ids Ray assigned, and the run's output goes to WORKDIR/NAME.log. A run that crashes or is killed is sent again and
resumes from its checkpoint; a node that dies takes its task with it, and Ray runs the task again elsewhere (the run,
which dies with its task, resumes there). Ctrl-C (or SIGTERM) at the sweep writes WORKDIR/sweep.stop, which every
task watches for: its run then hears Ctrl-C, saves a checkpoint and stops. The workdir must be one every node sees
(gs://, or a shared file system). Ray is the `[ray]` extra.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from etils import epath

from cnnjax import errors, slots
from cnnjax import workdir as workdir_lib

STOP = "sweep.stop"  # in the workdir: the sweep asks its tasks' runs to save and stop
STOP_CHECK_S = 2.0  # how often a task looks for it (a bucket's object: not too often)
CRASH_RETRIES = 2  # a run that ended without an error of its own (killed, crashed) is sent again this often
RAY_NAMES = {"gpu": "GPU", "tpu": "TPU"}  # the resource Ray schedules and assigns ids of, by platform


def connect(address: str, workdir: str):
  """ray.init for --ray=ADDRESS ('local': a cluster started here; 'auto': the one this machine belongs to); refuses
  a local workdir on a cluster of several nodes, which would each write their own."""
  import ray

  where = None if address == "local" else address
  ray.init(address=where, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
  nodes = [n for n in ray.nodes() if n["Alive"]]
  if len(nodes) > 1 and not workdir_lib.is_remote(workdir):
    ray.shutdown()
    raise ValueError(
      f"--workdir={workdir} is on this machine's disk, and the Ray cluster has {len(nodes)} nodes: give a workdir "
      "every node sees (gs://BUCKET/..., or a shared file system mounted at the same path)"
    )
  return ray


def options(platform: str, per_run: int) -> dict:
  """What one run asks of the cluster."""
  if platform == "gpu":
    return {"num_gpus": per_run, "num_cpus": 1}
  if platform == "tpu":
    return {"resources": {"TPU": per_run}, "num_cpus": 1}
  return {"num_cpus": per_run}


def run_task(args: list[str], platform: str, log: str) -> tuple[int, str]:
  """On the node: the run with the slot Ray assigned, its output appended to `log`; (its exit status, where it
  ran). A Ray cancel (Ctrl-C at the sweep) reaches the run as Ctrl-C, so it saves a checkpoint and stops."""
  import ray

  assigned = ray.get_runtime_context().get_accelerator_ids().get(RAY_NAMES.get(platform, ""), [])
  ids = tuple(int(i) for i in assigned) or tuple(sorted(os.sched_getaffinity(0)))
  slot = slots.Slot(platform, ids, slots.FIRST_PORT + ids[0] if platform == "tpu" else 0)
  env = {**os.environ, **slots.environment(slot.platform, slot.ids, slot.port)}

  def run(file) -> int:
    file.write(f"slot: {slot} on {os.uname().nodename}\n")
    file.flush()
    process = subprocess.Popen(args, env=env, stdout=file, stderr=file, text=True, preexec_fn=_dies_with_parent)
    stop, looked = epath.Path(log).parent / STOP, time.time()
    while process.poll() is None:
      time.sleep(0.2)
      if time.time() - looked > STOP_CHECK_S:
        looked = time.time()
        if stop.exists():  # the sweep was stopped: the run saves a checkpoint and stops
          process.send_signal(signal.SIGINT)
          return process.wait()
    return process.returncode

  return workdir_lib.logged(epath.Path(log), run), f"{slot} on {os.uname().nodename}"


def _dies_with_parent():
  """In the child: a SIGTERM when the task's worker process dies (its node lost, Ray's retry elsewhere), so the
  run saves and stops instead of running on beside the retried one; and Ctrl-C unblocked (Ray's workers block it,
  and a child inherits the mask), so a cancelled task's run hears it."""
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def execute(pending: list[tuple[str, list[str]]], workdir: str, ray, platform: str, per_run: int, record) -> dict:
  """Run (name, args) of every pending run as tasks; {name: exit status}. Crashed runs are sent again."""
  root = epath.Path(workdir)
  if (root / STOP).exists():  # a stop asked of an earlier sweep here
    (root / STOP).unlink()
  task = ray.remote(run_task).options(max_retries=3, **options(platform, per_run))
  submit = lambda name, args: (task.remote(args, platform, str(root / f"{name}.log")), name, args, time.time())
  running = {ref: (name, args, start) for ref, name, args, start in (submit(n, a) for n, a in pending)}
  codes, tries = {}, {name: 0 for name, _ in pending}
  # Ctrl-C and SIGTERM stop the sweep, set explicitly: a sweep started by a process that ignores SIGINT (a
  # background job, a test runner's worker) would otherwise inherit that
  previous = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while running:
      done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)  # (a timeout: signals are handled meanwhile)
      if not done:
        continue
      [ref] = done
      name, args, start = running.pop(ref)
      code, where = ray.get(ref)
      record.add(name, None, start, code, where=where)
      crashed = code not in (0, 1, 130, 143)
      if crashed and tries[name] < CRASH_RETRIES:
        tries[name] += 1
        print(f"{name}: ended with exit {code}; sending it again (it resumes from its checkpoint)", flush=True)
        new, *_ = submit(name, args)
        running[new] = (name, args, time.time())
        continue
      codes[name] = code
      print(f"{name}: {'done' if code == 0 else f'failed (exit {code}), see {root / name}.log'}", flush=True)
  except KeyboardInterrupt:
    workdir_lib.write_text(root / STOP, "")
    print(f"stopping: {len(running)} run(s) save a checkpoint and stop", file=sys.stderr, flush=True)
    for ref, (name, _, _) in running.items():
      codes[name] = ray.get(ref)[0]
    (root / STOP).unlink()
    stopped = sum(code in (130, 143) for code in codes.values())
    message = f"stopped: {stopped} run(s) saved a checkpoint and stopped; rerun the same command to go on."
    raise errors.Stopped(message, 130) from None
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  return codes
