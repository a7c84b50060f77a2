"""Sweeps: a list or grid of configs and overrides, each run in its own workdir, then one summary of them all.

    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py --workdir=runs/degradation              # one at a time
    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py:local --workdir=runs/deg --parallel=2   # 2 at a time
    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py --workdir=runs/degradation --summary_only
    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py --workdir=gs://B/deg --print_commands

A sweep file's `get_sweep(arg)` returns its runs, each a dict {"config": "configs/NAME.py:ARG", FIELD: VALUE,
...}; `grid(...)` builds the product of lists. Each run is `python -m cnnjax.main` in WORKDIR/NAME, NAME made
of its config argument and overrides (`cifar_resnet-20-plain__seed=1`). A rerun skips finished runs (their
summary.json exists) and resumes unfinished ones from their checkpoints. Then WORKDIR/summary.md, summary.csv
and summary.png (training loss of every run, final test error of each) gather them.
--print_commands prints each unfinished run's command instead, to queue anywhere (one per TPU VM, say).
"""

import concurrent.futures
import contextlib
import functools
import importlib.util
import itertools
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from absl import app, flags
from etils import epath

from cnnjax import cli, cloud, errors, metrics, slots
from cnnjax import workdir as workdir_lib

FLAGS = flags.FLAGS


def grid(**axes) -> list[dict]:
  """Every combination of the values of each axis: grid(config=[a, b], seed=[0, 1]) gives 4 runs."""
  return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def load(path: str) -> list[dict]:
  """The runs of sweep file `path` (`FILE.py[:ARG]`), each checked to name a config."""
  file, _, arg = path.partition(":")
  if not epath.Path(file).exists():
    raise ValueError(f"sweep file {file} does not exist")
  spec = importlib.util.spec_from_file_location("sweep_file", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweep = module.get_sweep(arg) if arg else module.get_sweep()
  if not sweep or any("config" not in run for run in sweep):
    raise ValueError(f"{path}: get_sweep() must return runs, each with a 'config' (configs/NAME.py[:ARG])")
  names = [run_name(run) for run in sweep]
  if len(set(names)) < len(names):
    raise ValueError(f"{path}: some runs are the same run twice: {sorted({n for n in names if names.count(n) > 1})}")
  return sweep


def run_name(run: dict) -> str:
  """A workdir name from the config and the overrides: cifar_resnet-20-plain__learning_rate=0.05__seed=1."""
  file, _, arg = run["config"].partition(":")
  head = epath.Path(file).stem + (f"-{arg.replace(',', '-')}" if arg else "")
  safe = lambda value: re.sub(r"[^\w.,=+-]", "-", str(value))  # a path or a space in a value: not a folder level
  return "__".join([head] + [f"{k}={safe(v)}" for k, v in sorted(run.items()) if k != "config"])


def command(run: dict, workdir: str, extra=()) -> list[str]:
  overrides = [
    f"--config.{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
    for k, v in sorted(run.items())
    if k != "config"
  ]
  return [sys.executable, "-m", "cnnjax.main", f"--config={run['config']}", *overrides, f"--workdir={workdir}", *extra]


def finished(run_dir) -> bool:
  return (epath.Path(run_dir) / "summary.json").exists()


class Children:
  """The sweep's runs as child processes, each in a session of its own: a Ctrl-C at the terminal reaches the
  sweep alone, and it passes each signal on once to every live run. So a first Ctrl-C (or SIGTERM) makes every
  run save a checkpoint and stop, and starts no new one; a second Ctrl-C stops the runs at once."""

  def __init__(self):
    self.live, self.received = set(), None
    self._lock = threading.Lock()  # a run starts entirely before or entirely after a signal is passed on

  def run(self, args, log, echo: bool = False, slot: slots.Slot | None = None) -> int | None:
    """The run's exit status, or None if the sweep was stopped before it could start. Its output goes to the file
    `log`, and with `echo` to this process's stdout and stderr as well, as it comes; with a `slot`, it sees only
    the slot's accelerators."""
    with self._lock:
      if self.received is not None:
        return None
      streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} if echo else {"stdout": log, "stderr": log}
      env = {**os.environ, **slots.environment(slot.platform, slot.ids, slot.port)} if slot else None
      place = {"env": env, "preexec_fn": slots.pin(slot)} if slot else {}
      process = subprocess.Popen(args, start_new_session=True, text=True, **streams, **place)
      self.live.add(process)
    try:
      if echo:
        written = threading.Lock()  # whole lines into the log, from the two streams
        copies = [
          threading.Thread(target=_tee, args=(process.stdout, sys.stdout, log, written)),
          threading.Thread(target=_tee, args=(process.stderr, sys.stderr, log, written)),
        ]
        for copy in copies:
          copy.start()
        for copy in copies:
          copy.join()
      return process.wait()
    finally:
      self.live.discard(process)

  def forward(self, signum, frame):
    del frame
    with self._lock:
      self.received = self.received or signum
      for process in list(self.live):
        process.send_signal(signum)

  @contextlib.contextmanager
  def forwarding(self):
    previous = {s: signal.signal(s, self.forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield self
    finally:
      for signum, handler in previous.items():
        signal.signal(signum, handler)


def _tee(pipe, stream, log, lock: threading.Lock):
  for line in pipe:
    stream.write(line)
    stream.flush()
    with lock:
      log.write(line)


SUCCEEDED_OR_STOPPED = (0, 130, 143, None)  # done, stopped by Ctrl-C or SIGTERM (it resumes), or never started


def record_failure(root: epath.Path, name: str, code: int | None):
  """WORKDIR/NAME.failed.json: a failed run's exit status and its last error line (from NAME.log), for the
  summary and the advice; removed once the run succeeds or stops as asked."""
  record = root / f"{name}.failed.json"
  if code in SUCCEEDED_OR_STOPPED:
    if record.exists():
      record.unlink()
    return
  errors = [line for line in (root / f"{name}.log").read_text().splitlines() if line.startswith("error: ")]
  error = errors[-1].removeprefix("error: ") if errors else ""
  workdir_lib.write_text(record, json.dumps({"exit": code, "error": error}))


def failure(root: epath.Path, name: str) -> dict | None:
  record = root / f"{name}.failed.json"
  return json.loads(record.read_text()) if record.exists() else None


def state(root: epath.Path, name: str) -> str:
  """A run's state in words: finished, failed (with its error), unfinished (resumable), or not started."""
  if finished(root / name):
    return "finished"
  if (failed := failure(root, name)) is not None:
    return f"failed: {failed['error'] or 'exit ' + str(failed['exit'])}"
  if (root / name / "checkpoints").exists():
    return "unfinished: resumes from its last checkpoint"
  return "not started"


def execute(
  sweep: list[dict], workdir: str, parallel: int = 1, extra=(), shared: list[slots.Slot] = (), sharded: bool = False
) -> list[str]:
  """Run every unfinished run, `parallel` at a time, or one in each of the `shared` slots of the machine's
  accelerators at a time; returns the names of those that failed.

  The sweep owns WORKDIR while it runs (a second sweep there is refused), and each run its own folder. A sweep
  of multi-host runs (`extra` names a coordinator) runs on every host, so there only the runs claim their
  folders, each for the whole job. The unfinished runs are listed once, at the start, so processes of a
  multi-host run all step through the same list. Each run's output goes to WORKDIR/NAME.log (one at a time, to
  the terminal too); a failure's last error line to NAME.failed.json (see `state`). Stopped by a signal (see
  Children), it raises errors.Stopped. WORKDIR/sweep.jsonl records each run: its slot and environment, start,
  end and exit status.
  """
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  pending = [run for run in sweep if not finished(root / run_name(run))]
  for run in sweep:
    if run not in pending:
      print(f"{run_name(run)}: finished already", flush=True)
  multihost = any(a.startswith("--coordinator_address") for a in extra)
  children, free, record = Children(), queue.Queue(), Record(root / "sweep.jsonl")
  for slot in shared or [None] * max(1, parallel):
    free.put(slot)
  echo = not shared and parallel == 1  # one at a time: its output shows as it comes (and is logged)
  one = functools.partial(_run_one, root=root, extra=extra, children=children, free=free, record=record, echo=echo)
  # one sweep owns the workdir; shards of one (each a machine's share of the runs) and runs of several hosts share
  # it, and only their runs claim their folders
  owner = contextlib.nullcontext() if multihost or sharded else workdir_lib.claim(root)
  workers = len(shared) or max(1, parallel)
  with owner, children.forwarding(), concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    codes = list(pool.map(one, pending))
  if children.received is not None:
    name = "Ctrl-C" if children.received == signal.SIGINT else "SIGTERM"
    stopped, waiting = sum(c in (130, 143) for c in codes), codes.count(None)
    raise errors.Stopped(
      f"stopped by {name}: {stopped} run(s) saved a checkpoint and stopped, {waiting} not started; "
      "rerun the same command to go on.",
      130 if children.received == signal.SIGINT else 143,
    )
  return [run_name(run) for run, code in zip(pending, codes) if code != 0]


def _run_one(run: dict, root: epath.Path, extra, children: Children, free: queue.Queue, record, echo: bool):
  """One run in the next free slot (`free`); its exit status, or None if the sweep was stopped before it."""
  name = run_name(run)
  if children.received is not None:
    return None
  slot = free.get()
  try:
    where = f" on {slot}" if slot else ""
    print(f"{name}: {'resuming' if (root / name / 'checkpoints').exists() else 'starting'}{where}", flush=True)
    args, start = command(run, str(root / name), extra), time.time()
    code = workdir_lib.logged(root / f"{name}.log", lambda log: _run_in(children, args, log, slot, echo=echo))
    record.add(name, slot, start, code)
  finally:
    free.put(slot)
  outcome = {0: "done", 130: "stopped by Ctrl-C", 143: "stopped by SIGTERM"}.get(code, f"failed (exit {code})")
  print(f"{name}: {outcome}" + ("" if code in (0, 130, 143, None) else f", see {root / name}.log"), flush=True)
  record_failure(root, name, code)
  return code


def _run_in(children: Children, args, log, slot: slots.Slot | None, echo: bool) -> int | None:
  if slot is not None:  # the log says where the run ran
    environment = " ".join(f"{k}={v}" for k, v in slots.environment(slot.platform, slot.ids, slot.port).items())
    log.write(f"slot: {slot}{f' ({environment})' if environment else ' (CPU affinity)'}\n")
    log.flush()
  return children.run(args, log, echo=echo, slot=slot)


class Record:
  """WORKDIR/sweep.jsonl: a line per run the sweep started (its slot and environment, start, end, exit status)."""

  def __init__(self, path: epath.Path):
    self.path, self._file, self._lock = path, None, threading.Lock()

  def add(self, name: str, slot: slots.Slot | None, start: float, code: int | None, where: str = ""):
    line = {"run": name, "slot": str(slot) if slot else where, "start": start, "end": time.time(), "exit": code}
    if slot is not None:
      line["environment"] = slots.environment(slot.platform, slot.ids, slot.port)
    with self._lock:
      self._file = self._file or workdir_lib.Appender(self.path)  # (made once: it holds a bucket's copy)
      self._file.append((json.dumps(line) + "\n").encode())


def execute_on_ray(sweep: list[dict], workdir: str, address: str, platform: str, per_run: int) -> list[str]:
  """Every unfinished run as a task of the Ray cluster at `address` (cnnjax.sweep_ray), each asking for `per_run`
  of the `platform`'s devices; returns the names of those that failed."""
  from cnnjax import sweep_ray  # (here: Ray is an optional extra)

  root = epath.Path(workdir)
  pending = [(run_name(r), command(r, str(root / run_name(r)))) for r in sweep if not finished(root / run_name(r))]
  ray = sweep_ray.connect(address, workdir)
  try:
    with workdir_lib.claim(root):
      codes = sweep_ray.execute(pending, workdir, ray, platform, per_run, Record(root / "sweep.jsonl"))
  finally:
    ray.shutdown()
  for name, code in codes.items():
    record_failure(root, name, code)
  return [name for name, code in codes.items() if code != 0]


def summarize(sweep: list[dict], workdir: str) -> list[dict]:
  """summary.md, summary.csv and summary.png in `workdir`: every run with its state, the finished ones with their
  final errors (and, in the figure, their curves); returns the table's rows (none when no run has started)."""
  root, rows, curves = epath.Path(workdir), [], {}
  for run in sweep:
    name = run_name(run)
    row = {"run": name, **run, "state": state(root, name)}
    if row["state"] == "finished":
      errors = metrics.final_errors(root / name)
      row |= {"final_step": errors["step"], "train_error": round(errors["train_error"], 2)}
      row["test_error"] = round(errors["test_error"], 2)
      lines = metrics.read_metrics(root / name / "metrics.jsonl")
      curves[name] = [(line["step"], line["train_loss"]) for line in lines if "train_loss" in line]
    rows.append(row)
  if all(row["state"] == "not started" for row in rows):
    return []
  columns = list(dict.fromkeys(k for row in rows for k in row))
  rows = [{c: row.get(c, "") for c in columns} for row in rows]
  metrics.write_csv(root / "summary.csv", rows)
  table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  table += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
  (root / "summary.md").write_text("\n".join(table) + "\n")
  with metrics.figure(root / "summary.png", 1, 2, figsize=(12, 4.5)) as (loss_ax, error_ax):
    for name, points in curves.items():
      metrics.plot_series(loss_ax, *zip(*points), label=name)
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    if 0 < len(curves) <= 8:  # beyond that a legend hides the curves; the bars beside name every run
      loss_ax.legend(fontsize=7)
    done = [row for row in rows if row["state"] == "finished"]
    error_ax.barh([row["run"] for row in done], [row["test_error"] for row in done])
    error_ax.set(xlabel="test error (%)", title="final test error")
    error_ax.tick_params(axis="y", labelsize=7)
  return rows


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  flags.DEFINE_string("sweep", None, "Sweep file, e.g. configs/sweeps/degradation.py[:ARG].")
  flags.DEFINE_string("workdir", None, "Where each run gets its folder and the summary goes (local or gs://).")
  flags.DEFINE_integer(
    "parallel",
    1,
    "Runs at a time, each in its own process with an equal share of the machine's GPUs, TPU chips or CPU cores.",
    lower_bound=1,
  )
  flags.DEFINE_integer(
    "devices_per_run", 0, "GPUs, TPU chips or CPU cores per run (instead of --parallel).", lower_bound=0
  )
  flags.DEFINE_string(
    "accelerators",
    "",
    "What the machine has, instead of looking: gpu:8, tpu:v4-8, cpu:16 (with --ray: gpu, tpu or "
    "cpu, what each run asks the cluster for, --devices_per_run of them).",
  )
  flags.DEFINE_string("shard", "", "I/N: run only this machine's share of the sweep (every N-th run from the I-th).")
  flags.DEFINE_string(
    "ray",
    "",
    "Send the runs to a Ray cluster: auto (the one this machine belongs to), local (one "
    "started here) or its address. Needs the [ray] extra.",
  )
  flags.DEFINE_bool("summary_only", False, "Only gather the finished runs into the summary.")
  flags.DEFINE_bool("print_commands", False, "Print each unfinished run's cnnjax.main command instead of running it.")
  flags.mark_flags_as_required(["sweep", "workdir"])
  cli.define_distributed_flags()  # passed on to every run (a sweep queued on a TPU VM slice: =auto)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.start(compiles=False)
  sweep = load(FLAGS.sweep)
  if FLAGS.shard:
    sweep = shard(sweep, FLAGS.shard)
  if workdir_lib.is_remote(FLAGS.workdir):
    cloud.check_readable(FLAGS.workdir)
  names = ("coordinator_address", "num_processes", "process_id", "distributed_timeout")
  extra = [f"--{n}={FLAGS[n].value}" for n in names if FLAGS[n].present]
  if FLAGS.print_commands:
    for run in sweep:
      if not finished(epath.Path(FLAGS.workdir) / run_name(run)):
        print(shlex.join(["python", *command(run, str(epath.Path(FLAGS.workdir) / run_name(run)), extra)[1:]]))
    return
  if FLAGS.summary_only:
    failed = []
  elif FLAGS.ray:
    platform = FLAGS.accelerators.partition(":")[0] or "cpu"
    failed = execute_on_ray(sweep, FLAGS.workdir, FLAGS.ray, platform, FLAGS.devices_per_run or 1)
  else:
    failed = execute(sweep, FLAGS.workdir, FLAGS.parallel, extra, shared_slots(extra), sharded=bool(FLAGS.shard))
  if FLAGS.shard:  # the other shards' runs may still be running: the summary is made once all are done
    done = f"{len(sweep) - len(failed)} of {len(sweep)} runs done"
    print(f"shard {FLAGS.shard}: {done}; when every shard is, --summary_only gathers them", flush=True)
    if failed:
      sys.exit(f"error: {advice(epath.Path(FLAGS.workdir), failed)}")
    return
  rows = summarize(sweep, FLAGS.workdir)
  done = sum(row["state"] == "finished" for row in rows)
  where = (
    f"summary in {FLAGS.workdir}/summary.md, summary.csv, summary.png" if rows else f"no summary yet in {FLAGS.workdir}"
  )
  print(f"{done} of {len(sweep)} runs finished; {where}")
  if failed:
    sys.exit(f"error: {advice(epath.Path(FLAGS.workdir), failed)}")


def shard(sweep: list[dict], which: str) -> list[dict]:
  """The runs of shard I/N (`which`): every N-th run from the I-th, so N machines split a sweep between them."""
  index, _, count = which.partition("/")
  if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
    raise ValueError(f"--shard={which}: write I/N with 0 <= I < N (this machine's share of N)")
  return sweep[int(index) :: int(count)]


def shared_slots(extra) -> list[slots.Slot]:
  """The slots of this machine's accelerators the runs share (--parallel, --devices_per_run, --accelerators); none
  for one run at a time over everything, or for runs of several hosts, which each take their hosts whole."""
  if not (FLAGS.parallel > 1 or FLAGS.devices_per_run or FLAGS.accelerators):
    return []
  if any(a.startswith("--coordinator_address") for a in extra):
    raise ValueError("runs of several processes each take their hosts whole: give them no --parallel")
  found = slots.parse(FLAGS.accelerators) if FLAGS.accelerators else slots.detect()
  shared = slots.split(found, 0 if FLAGS.devices_per_run else FLAGS.parallel, FLAGS.devices_per_run)
  print(f"{len(shared)} slot(s) of {found.found}: {'; '.join(map(str, shared))}", flush=True)
  return shared


def advice(root: epath.Path, failed: list[str]) -> str:
  """What the failed runs need, by how they failed: a run that stopped with an error (a bad override, a dataset
  that is not there, a diverging loss) fails the same way until that is fixed; one that crashed or was killed
  resumes from its checkpoint when the command is rerun."""
  records = {name: failure(root, name) or {"exit": None, "error": ""} for name in failed}
  with_error = [f"{name} ({r['error']})" for name, r in records.items() if r["exit"] == 1 and r["error"]]
  crashed = [f"{name} (exit {r['exit']})" for name, r in records.items() if not (r["exit"] == 1 and r["error"])]
  parts = []
  if with_error:
    parts.append(
      f"{len(with_error)} run(s) failed with an error: {', '.join(with_error)}: fix what it says, then rerun the "
      "same command"
    )
  if crashed:
    parts.append(
      f"{len(crashed)} run(s) ended without one (a crash or a kill: see NAME.log): {', '.join(crashed)}: rerun "
      "the same command to resume them"
    )
  return "; ".join(parts)


if __name__ == "__main__":
  define_flags()
  cli.run(main, config_flag="")
