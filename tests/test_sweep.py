"""The sweep runner on a tiny grid: two LeNet-5 runs on digits, skipped when finished, resumed when not,
summarised into one table and plot; and the sweep file the repository ships."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from cnnjax import sweep

from helpers import ROOT, TINY, run_sweep


def test_a_sweep_runs_skips_resumes_and_summarises(tmp_path, tfds_dir):
  file, workdir = tmp_path / "tiny.py", tmp_path / "sweep"
  file.write_text(TINY)
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}  # the session's prepared digits
  names = [sweep.run_name(r) for r in sweep.load(str(file))]
  assert names == [
    f"lenet5__eval_every_steps=2__learning_rate={lr}__log_every_steps=2__num_steps=4" for lr in (0.01, 0.05)
  ]
  out = run_sweep(file, workdir, "--parallel=2", "--accelerators=cpu:2", env=env)  # two slots on any machine
  assert all(f"{n}: done" in out for n in names) and "2 of 2 runs finished" in out

  (workdir / names[1] / "summary.json").unlink()  # as if the run had stopped after its last checkpoint
  out = run_sweep(file, workdir, env=env)
  assert f"{names[0]}: finished already" in out and f"{names[1]}: resuming" in out
  assert "resumed at step 4" in out and "2 of 2 runs finished" in out

  rows = list(csv.DictReader((workdir / "summary.csv").open()))
  assert [r["run"] for r in rows] == names and {r["learning_rate"] for r in rows} == {"0.01", "0.05"}
  for r in rows:  # each row is its run's summary, the error in percent
    summary = json.loads((workdir / r["run"] / "summary.json").read_text())
    assert r["final_step"] == "4" and float(r["test_error"]) == pytest.approx(
      100 * (1 - summary["eval_accuracy"]), abs=0.006
    )  # (rounded to 0.01)
  assert (
    len((workdir / "summary.md").read_text().splitlines()) == 2 + 2 and (workdir / "summary.png").stat().st_size > 0
  )
  assert run_sweep(file, workdir, "--print_commands", env=env).strip() == ""  # nothing left to run


LONG = """from cnnjax.sweep import grid


def get_sweep():
  return grid(config=["configs/lenet5.py"], seed=[0, 1, 2], num_steps=[100000], log_every_steps=[5],
              eval_every_steps=[100000], checkpoint_every_steps=[100000])
"""


def test_a_sweep_owns_its_workdir_and_ctrl_c_stops_it_with_its_running_run_saved(tmp_path, tfds_dir):
  file, workdir = tmp_path / "long.py", tmp_path / "sweep"
  file.write_text(LONG)
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}
  first = subprocess.Popen(
    [sys.executable, "-m", "cnnjax.sweep", f"--sweep={file}", f"--workdir={workdir}"],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  for line in first.stdout:
    if line.startswith("step 10/"):  # the first run trains (its output passes through the sweep's)
      break
  second = subprocess.run(
    [sys.executable, "-m", "cnnjax.sweep", f"--sweep={file}", f"--workdir={workdir}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert second.returncode == 1 and f"is in use by another run: process {first.pid}" in second.stderr, second.stderr
  first.send_signal(signal.SIGINT)  # the sweep alone, as a terminal's Ctrl-C reaches it: it passes it on to its run
  _out, err = first.communicate(timeout=120)
  assert first.returncode == 130, err
  assert err.strip().splitlines()[-1] == (
    "stopped by Ctrl-C: 1 run(s) saved a checkpoint and stopped, 2 not started; rerun the same command to go on."
  )
  running = workdir / sweep.run_name(sweep.load(str(file))[0])
  assert "stopped by Ctrl-C at step" in err and any(p.name.isdigit() for p in (running / "checkpoints").iterdir())
  assert not (workdir / sweep.run_name(sweep.load(str(file))[1])).exists()  # not started


def test_the_degradation_sweep_is_the_papers_grid():
  runs = sweep.load("configs/sweeps/degradation.py:local")
  assert len(runs) == 4 * 2 * 3  # depths 20-56, plain and residual, three seeds
  assert {r["config"] for r in runs} >= {"configs/cifar_resnet.py:56,plain,local", "configs/cifar_resnet.py:20,local"}
  commands = [sweep.command(r, "w") for r in runs]
  assert all(c[2] == "cnnjax.main" and c[-1] == "--workdir=w" and "--config.seed=" in " ".join(c) for c in commands)
  with pytest.raises(ValueError, match="write nothing or 'local'"):
    sweep.load("configs/sweeps/degradation.py:big")


def test_grid_and_names():
  assert sweep.grid(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
  assert sweep.run_name({"config": "configs/resnet.py:34,plain", "seed": 1, "learning_rate": 0.05}) == (
    "resnet-34-plain__learning_rate=0.05__seed=1"
  )
  assert sweep.run_name({"config": "configs/lenet5.py", "data_dir": "/data/tfds"}) == "lenet5__data_dir=-data-tfds"


def test_a_failed_run_is_in_the_summary_with_its_error_and_the_advice_fits_how_it_failed(tmp_path, tfds_dir):
  """A run whose override is invalid fails the same way again: the sweep says to fix it, not to rerun and resume;
  summary.md and summary.csv list every run with its state."""
  file, workdir = tmp_path / "bad.py", tmp_path / "sweep"
  file.write_text(TINY.replace("learning_rate=[0.01, 0.05]", 'learning_rate=[0.01, "fast"]'))
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}
  command = [sys.executable, "-m", "cnnjax.sweep", f"--sweep={file}", f"--workdir={workdir}"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  good, bad = (sweep.run_name(r) for r in sweep.load(str(file)))
  why = "flag --config.learning_rate=fast: could not convert string to float: 'fast'"
  assert result.returncode == 1 and "1 of 2 runs finished" in result.stdout
  assert result.stderr.strip().splitlines()[-1] == (
    f"error: 1 run(s) failed with an error: {bad} ({why}): fix what it says, then rerun the same command"
  )
  rows = {r["run"]: r for r in csv.DictReader((workdir / "summary.csv").open())}
  assert rows[good]["state"] == "finished" and rows[good]["final_step"] == "4"
  assert rows[bad]["state"] == f"failed: {why}" and rows[bad]["test_error"] == ""
  assert f"| failed: {why} |" in (workdir / "summary.md").read_text()

  # a run that crashed (killed: no error line) is to be resumed; one not yet started is said to be so
  (workdir / f"{bad}.failed.json").write_text(json.dumps({"exit": -9, "error": ""}))
  assert sweep.state(workdir, bad) == "failed: exit -9" and sweep.state(workdir, "other") == "not started"
  assert sweep.advice(workdir, [bad]) == (
    f"1 run(s) ended without one (a crash or a kill: see NAME.log): {bad} (exit -9): rerun the same command to "
    "resume them"
  )
