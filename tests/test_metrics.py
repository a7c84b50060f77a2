"""What a run leaves behind: metrics.jsonl and TensorBoard events, readable by TensorBoard, and kept straight on
resume."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port

from cnnjax import metrics


def scalars(folder) -> dict:
  """{tag: [(step, value)]} as TensorBoard reads the event files of `folder`."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(folder))
  events.Reload()
  return {tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_reads_what_a_run_writes_and_a_resume_keeps_every_step_once(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write({"step": step, "epoch": step / 2, "train_loss": 1.0 / step})
  assert scalars(tmp_path / "tensorboard") == {"train_loss": [(1, 1.0), (2, 0.5), (3, 0.333333), (4, 0.25)]}
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"step": 5, "train_lo')  # a line cut short by a process killed while writing it
  assert [line["step"] for line in metrics.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
  time.sleep(1.1)  # event files are named by the second they start in
  resumed = metrics.Writer(str(tmp_path), resumed_at=2)  # the last checkpoint was at step 2: steps 3, 4 are redone
  for step in (3, 4):
    resumed.write({"step": step, "epoch": step / 2, "train_loss": 2.0 / step})
  assert [line["train_loss"] for line in metrics.read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 0.5, 2 / 3, 0.5]
  assert scalars(tmp_path / "tensorboard") == {"train_loss": [(1, 1.0), (2, 0.5), (3, 0.666667), (4, 0.5)]}


def test_the_readme_tensorboard_command_serves_a_runs_curves(tmp_path):
  metrics.Writer(str(tmp_path / "run")).write({"step": 1, "epoch": 0.5, "train_loss": 0.5, "eval_accuracy": 0.75})
  port = free_port()
  # the `tensorboard` command the install put beside this Python, as docs/training.md runs it
  command = [
    os.path.join(os.path.dirname(sys.executable), "tensorboard"),
    f"--logdir={tmp_path}",
    f"--port={port}",
    "--host=127.0.0.1",
  ]
  server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline, tags = time.time() + 60, {}
    while time.time() < deadline and not tags:
      try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as response:
          tags = json.loads(response.read())
      except OSError:
        time.sleep(0.5)
    if not tags:
      pytest.fail("tensorboard did not serve the run's scalars within 60 s")
    assert set(tags["run/tensorboard"]) == {"train_loss", "eval_accuracy"}
  finally:
    server.terminate()
    server.wait(timeout=30)
