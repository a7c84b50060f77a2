"""A machine's accelerators shared among a sweep's runs (cnnjax.slots), and a sweep that uses them. This machine has
no GPU or TPU: the environments are checked against the variables libtpu and CUDA read, and the sweeps run real
(tiny) runs on the CPU under GPU and TPU slots; what a real GPU or TPU does with them is not tested here."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from cnnjax import slots

from helpers import ROOT, TINY


@pytest.mark.parametrize(
  "machine,per_run,expected",
  [
    ("gpu:8", 1, [("0",), ("1",), ("2",), ("3",), ("4",), ("5",), ("6",), ("7",)]),
    ("gpu:8", 2, [("0,1",), ("2,3",), ("4,5",), ("6,7",)]),
    ("gpu:8", 4, [("0,1,2,3",), ("4,5,6,7",)]),
    ("gpu:8", 8, [("0,1,2,3,4,5,6,7",)]),
    ("tpu:v4-8", 1, [("0", "1,1,1"), ("1", "1,1,1"), ("2", "1,1,1"), ("3", "1,1,1")]),
    ("tpu:v4-8", 2, [("0,1", "1,2,1"), ("2,3", "1,2,1")]),
    ("tpu:v5e-8", 1, [(str(i), "1,1,1") for i in range(8)]),
    ("tpu:v5litepod-8", 2, [("0,1", "1,2,1"), ("2,3", "1,2,1"), ("4,5", "1,2,1"), ("6,7", "1,2,1")]),
    ("tpu:v6e-8", 4, [("0,1,2,3", "2,2,1"), ("4,5,6,7", "2,2,1")]),
    ("tpu:v5e-8", 8, [("0,1,2,3,4,5,6,7", "2,4,1")]),
  ],
)
def test_each_slot_sees_its_own_devices(machine, per_run, expected):
  shared = slots.split(slots.parse(machine), per_run=per_run)
  assert slots.split(slots.parse(machine), parallel=len(shared)) == shared  # the same slots, asked by their number
  environments = [slots.environment(s.platform, s.ids, s.port) for s in shared]
  if machine.startswith("gpu"):
    assert [(e["CUDA_VISIBLE_DEVICES"],) for e in environments] == expected and all(len(e) == 1 for e in environments)
    return
  assert [(e["TPU_VISIBLE_CHIPS"], e["TPU_CHIPS_PER_PROCESS_BOUNDS"]) for e in environments] == expected
  ports = [e["TPU_PROCESS_PORT"] for e in environments]
  assert len(set(ports)) == len(ports)  # libtpu's port: one per process, or the second cannot start
  for e in environments:
    assert e["TPU_PROCESS_ADDRESSES"] == f"localhost:{e['TPU_PROCESS_PORT']}" and e["TPU_PROCESS_BOUNDS"] == "1,1,1"
    assert e["JAX_PLATFORMS"] == "tpu"  # a run that cannot open its chips fails, rather than training on the CPU
    assert (e["CLOUD_TPU_TASK_ID"], e["ALLOW_MULTIPLE_LIBTPU_LOAD"]) == ("0", "true")


def test_cpu_slots_are_cores_by_affinity_and_bad_splits_are_refused():
  cores = slots.split(slots.parse("cpu:16"), parallel=4)
  assert [s.ids for s in cores] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]
  assert slots.environment("cpu", (0, 1), 0) == {} and slots.pin(cores[0]) is not None
  here = slots.detect()  # this machine: no GPU, no TPU
  assert here.platform == "cpu" and set(here.ids) == os.sched_getaffinity(0)
  with pytest.raises(ValueError, match=r"^--parallel=3 does not split 8 GPUs into equal slots$"):
    slots.split(slots.parse("gpu:8"), parallel=3)
  with pytest.raises(ValueError, match=r"does not split TPU v4-8 \(4 chips\) into equal slots"):
    slots.split(slots.parse("tpu:v4-8"), per_run=3)
  with pytest.raises(ValueError, match=r"unknown TPU type 'v9-8'.*known: v2-8"):
    slots.parse("tpu:v9-8")
  with pytest.raises(ValueError, match="write gpu:COUNT, tpu:TYPE"):
    slots.parse("gpus:8")


def sweep(tmp_path, tfds_dir, runs: str, *flags):
  file, workdir = tmp_path / "sweep.py", tmp_path / "w"
  file.write_text(TINY.replace("learning_rate=[0.01, 0.05]", runs))
  command = [sys.executable, "-m", "cnnjax.sweep", f"--sweep={file}", f"--workdir={workdir}", *flags]
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  record = [json.loads(line) for line in (workdir / "sweep.jsonl").read_text().splitlines()]
  return done, record, workdir


def test_a_sweep_gives_each_run_a_slot_of_its_own_and_no_more_run_at_once(tmp_path, tfds_dir):
  """4 runs on 4 (pretended) GPUs, 2 at a time: each run in a slot of 2 GPUs, never two in one slot at once, never
  more than 2 at once; a run that fails does not stop the others, and the sweep names it."""
  done, record, workdir = sweep(
    tmp_path, tfds_dir, 'learning_rate=[0.01, 0.02, 0.05, "fast"]', "--accelerators=gpu:4", "--parallel=2"
  )
  assert done.returncode == 1 and "failed with an error" in done.stderr.splitlines()[-1]
  assert "learning_rate=fast" in done.stderr.splitlines()[-1] and "3 of 4 runs finished" in done.stdout
  assert "2 slot(s) of 4 GPUs: gpu 0,1; gpu 2,3" in done.stdout
  assert sorted(r["exit"] for r in record) == [0, 0, 0, 1] and {r["slot"] for r in record} == {"gpu 0,1", "gpu 2,3"}
  for r in record:
    assert r["environment"] == {"CUDA_VISIBLE_DEVICES": r["slot"].split()[1]}
    log = (workdir / f"{r['run']}.log").read_text()
    assert log.splitlines()[0] == f"slot: {r['slot']} (CUDA_VISIBLE_DEVICES={r['slot'].split()[1]})"
  for moment in [r["start"] + 1e-3 for r in record]:
    running = [r for r in record if r["start"] <= moment < r["end"]]
    assert len(running) <= 2 and len({r["slot"] for r in running}) == len(running)
  rows = list(csv.DictReader((workdir / "summary.csv").open()))
  assert [r["state"] for r in rows].count("finished") == 3


def test_tpu_slots_make_a_run_that_cannot_open_its_chips_fail_in_one_line(tmp_path, tfds_dir):
  """v4-8's 4 chips, one per run: each run gets a chip, a port and JAX_PLATFORMS=tpu. This machine has no TPU, so
  each run stops with JAX's one-line reason: it does not train on the CPU without saying so."""
  done, record, workdir = sweep(
    tmp_path, tfds_dir, "learning_rate=[0.01, 0.02], seed=[0, 1]", "--accelerators=tpu:v4-8", "--parallel=4"
  )
  assert done.returncode == 1 and sorted(r["slot"] for r in record) == ["tpu 0", "tpu 1", "tpu 2", "tpu 3"]
  assert len({r["environment"]["TPU_PROCESS_PORT"] for r in record}) == 4
  for r in record:
    assert r["exit"] == 1 and "Unable to initialize backend 'tpu'" in (workdir / f"{r['run']}.failed.json").read_text()
    assert "step 1/" not in (workdir / f"{r['run']}.log").read_text()


RAY_RUNS = (
  'grid(config=["configs/lenet5.py"], learning_rate=[0.01], seed=[0, 1], num_steps=[40], log_every_steps=[4], '
  "checkpoint_every_steps=[8], eval_every_steps=[40])"
)


def test_a_sweep_on_a_local_ray_cluster_resends_a_killed_run_which_resumes(tmp_path, tfds_dir):
  """`--ray=local`: the runs as Ray tasks on a cluster the sweep starts here. Run 0's process is killed mid-way (as a
  crashed run would end): it is sent again and resumes from its checkpoint, and ends with the parameters an
  uninterrupted run ends with (the local backend's, run first); the summary is the local backend's."""
  import signal
  import threading
  import time

  import numpy as np

  from cnnjax import checkpoint

  file = tmp_path / "sweep.py"
  file.write_text(f"from cnnjax.sweep import grid\n\n\ndef get_sweep():\n  return {RAY_RUNS}\n")
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}
  sweep_command = lambda workdir, *flags: [
    sys.executable,
    "-m",
    "cnnjax.sweep",
    f"--sweep={file}",
    f"--workdir={workdir}",
    *flags,
  ]
  local = subprocess.run(sweep_command(tmp_path / "local"), cwd=ROOT, capture_output=True, text=True, env=env)
  assert local.returncode == 0, local.stderr[-2000:]
  names = sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_dir())

  victim = tmp_path / "ray" / names[0]
  killed = []

  def kill_mid_way():  # when the run has logged step 16 (two checkpoints saved), kill its process
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
      log = tmp_path / "ray" / f"{names[0]}.log"
      if log.exists() and "step 16/" in log.read_text() and (victim / "owner.json").exists():
        os.kill(json.loads((victim / "owner.json").read_text())["pid"], signal.SIGKILL)
        killed.append(True)
      time.sleep(0.05)

  threading.Thread(target=kill_mid_way, daemon=True).start()
  result = subprocess.run(
    sweep_command(tmp_path / "ray", "--ray=local"), cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
  )
  assert result.returncode == 0 and killed, result.stderr[-3000:]
  assert f"{names[0]}: ended with exit -9; sending it again (it resumes from its checkpoint)" in result.stdout
  log = (tmp_path / "ray" / f"{names[0]}.log").read_text()
  assert log.count("slot: ") == 2 and re.search(r"resumed at step (8|16)\b", log), log  # its last checkpoint
  for name in names:
    ours = checkpoint.read_state(tmp_path / "ray" / name / "checkpoints" / "40" / "state")["params"]
    theirs = checkpoint.read_state(tmp_path / "local" / name / "checkpoints" / "40" / "state")["params"]
    for a, b in zip(jax_leaves(ours), jax_leaves(theirs)):
      np.testing.assert_array_equal(a, b)
  same = lambda workdir: list(csv.DictReader((workdir / "summary.csv").open()))
  assert same(tmp_path / "ray") == same(tmp_path / "local")
  record = [json.loads(line) for line in (tmp_path / "ray" / "sweep.jsonl").read_text().splitlines()]
  assert [r["exit"] for r in record if r["run"] == names[0]] == [-9, 0] and all(" on " in r["slot"] for r in record)


def jax_leaves(tree):
  import jax

  return jax.tree.leaves(tree)


def test_machines_split_a_sweep_by_shard_and_the_summary_gathers_them(tmp_path, tfds_dir):
  """launch/tpu.sh's sweep of small runs over W workers: each worker runs every W-th run (--shard=I/W) in the one
  workdir, none claims it whole, and --summary_only gathers all."""
  file, workdir = tmp_path / "sweep.py", tmp_path / "w"
  file.write_text(TINY.replace("learning_rate=[0.01, 0.05]", "learning_rate=[0.01, 0.02, 0.05]"))
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}
  command = lambda *flags: [sys.executable, "-m", "cnnjax.sweep", f"--sweep={file}", f"--workdir={workdir}", *flags]
  shards = [
    subprocess.Popen(command(f"--shard={i}/2"), cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE) for i in range(2)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in shards]
  assert [p.returncode for p in shards] == [0, 0]
  assert "shard 0/2: 2 of 2 runs done" in outputs[0] and "shard 1/2: 1 of 1 runs done" in outputs[1]
  gathered = subprocess.run(command("--summary_only"), cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
  assert "3 of 3 runs finished" in gathered.stdout, gathered.stderr


def test_ctrl_c_stops_a_ray_sweep_with_every_run_saved(tmp_path, tfds_dir):
  """Ctrl-C at a `--ray` sweep: each task's run hears Ctrl-C (through WORKDIR/sweep.stop), saves a checkpoint and
  stops; the sweep ends with one line and the signal's status, and no run is left behind."""
  import signal
  import time

  file, workdir = tmp_path / "sweep.py", tmp_path / "w"
  long = 'grid(config=["configs/lenet5.py"], seed=[0, 1], num_steps=[100000], log_every_steps=[5])'
  file.write_text(f"from cnnjax.sweep import grid\n\n\ndef get_sweep():\n  return {long}\n")
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}
  command = [sys.executable, "-m", "cnnjax.sweep", f"--sweep={file}", f"--workdir={workdir}", "--ray=local"]
  # (SIGINT ignored, as a test runner's worker may pass it on: the sweep must take Ctrl-C all the same)
  ignoring = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
  sweep = subprocess.Popen(
    command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ignoring
  )
  try:
    deadline = time.time() + 300
    logs = lambda: [p.read_text() for p in workdir.glob("*.log")] if workdir.exists() else []
    while time.time() < deadline and not (len(logs()) == 2 and all("step 10/" in log for log in logs())):
      time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)
    _, err = sweep.communicate(timeout=120)
  finally:
    sweep.kill()  # (only if it is still there: its runs die with its Ray workers, then)
  assert sweep.returncode == 130, err[-2000:]
  assert (
    err.strip().splitlines()[-1] == "stopped: 2 run(s) saved a checkpoint and stopped; rerun the same command to go on."
  )
  for run in (p for p in workdir.iterdir() if p.is_dir()):
    assert any(c.name.isdigit() for c in (run / "checkpoints").iterdir()), run
  assert not (workdir / "sweep.stop").exists()
  assert "stopped by Ctrl-C at step" in "".join(logs())
