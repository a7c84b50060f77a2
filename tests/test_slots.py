"""A machine's accelerators shared among a sweep's runs (cnnjax.slots), and a sweep that uses them. This machine has
no GPU or TPU: the environments are checked against the variables libtpu and CUDA read, and the sweeps run real
(tiny) runs on the CPU under GPU and TPU slots; what a real GPU or TPU does with them is not tested here."""

import csv
import json
import os
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
