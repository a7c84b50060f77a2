"""Several processes, one run: two processes on localhost (4 simulated CPU devices each, gloo collectives)
train as one process with 8 devices does, checkpoint to one path, resume; a lost process stops the run."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import SUITE_XLA_FLAGS, free_port

from cnnjax import evaluation

from helpers import ROOT, initial_workdir, thin_resnet

# float64 (JAX_ENABLE_X64 below): then one process and two agree to summation order, and a tight bound can tell a
# real difference. VGG-11 with BatchNorm, thin: BatchNorm statistics and dropout masks must follow the global batch.
STEPS = [
  "--config=configs/vgg.py:11,bn,local",
  "--config.model_options.widths=4,4,8,8,8",
  "--config.model_options.fc_width=16",
  "--config.image_size=16",
  "--config.batch_size=16",
  "--config.dtype=float64",
  "--config.num_steps=6",
  "--config.log_every_steps=3",
  "--config.eval_every_steps=3",
]


def launch(workdir, processes: int, *args, port: int = 0):
  """`processes` cnnjax.main processes sharing 8 CPU devices among them."""
  env = {
    **os.environ,
    "JAX_ENABLE_X64": "1",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes} {SUITE_XLA_FLAGS}",
  }
  distributed = [f"--coordinator_address=127.0.0.1:{port or free_port()}", f"--num_processes={processes}"]
  return [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "cnnjax.main",
        f"--workdir={workdir}",
        *args,
        *(distributed + [f"--process_id={i}"] if processes > 1 else []),
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(processes)
  ]


def finish(processes, timeout=240):
  outputs = [p.communicate(timeout=timeout) for p in processes]
  for p, (_out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-2000:]
  return outputs


def state(workdir, step):
  """The saved parameters and BatchNorm statistics as numpy arrays (readable whatever devices saved them)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    saved = checkpointer.restore(path, restore_args=args)
  return {"params": saved["params"], "batch_stats": saved["batch_stats"]}


def test_two_processes_train_as_one_process_with_eight_devices_and_resume(tfds_dir, tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  steps = [*STEPS, f"--config.data_dir={tfds_dir}"]
  finish(launch(one, 1, *steps) + launch(two, 2, *steps))
  a, b = state(one, 6), state(two, 6)
  assert jax.tree.structure(a) == jax.tree.structure(b) and "batch_stats" in a
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)  # entries of scale 1: a bug moves them by far more
  longer = [s for s in steps if not s.startswith("--config.num_steps")] + ["--config.num_steps=9"]
  (out0, _), (out1, _) = finish(launch(two, 2, *longer))  # resumes at 6
  ours = ("resumed at step", "eval at step", "done: final step", "wrote ")  # gloo's C++ prints on every process
  assert "resumed at step 6" in out0 and not any(line in out1 for line in ours)  # only process 0 prints
  summary = json.loads((two / "summary.json").read_text())
  assert summary["final_step"] == 9 and sorted(p.name for p in (two / "checkpoints").iterdir()) == ["3", "6", "9"]


def test_a_lost_process_stops_the_others_within_the_timeout(tfds_dir, tmp_path):
  processes = launch(
    tmp_path,
    2,
    "--config=configs/lenet5.py",
    "--config.num_steps=100000",
    "--config.log_every_steps=5",
    f"--config.data_dir={tfds_dir}",
    "--distributed_timeout=5",
  )
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 180
  while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
    time.sleep(0.5)
  assert metrics.exists(), processes[0].communicate(timeout=5)[1][-2000:]
  processes[1].send_signal(signal.SIGKILL)
  killed = time.time()
  try:
    _, err = processes[0].communicate(timeout=90)
  except subprocess.TimeoutExpired:
    processes[0].kill()
    pytest.fail("the surviving process still waits 90 s after its peer died")
  assert processes[0].returncode != 0
  # JAX's own words, after --distributed_timeout seconds without the peer's heartbeat
  assert "another task died" in err and time.time() - killed < 60


def test_two_processes_evaluate_an_ensemble_densely_as_one_process_does(small_tfds, tmp_path):
  """Dense views and ensembles are scored outside the pmapped step (each host its own examples, on its own devices,
  in shapes of its own): the two hosts' sums must still add up to what one process finds (here, in this one)."""
  members = []
  for seed in (0, 1):
    config = thin_resnet(small_tfds, seed=seed, eval_protocol="dense", eval_scales=(224, 256))
    members.append(initial_workdir(config, tmp_path / f"w{seed}"))
  expected = evaluation.ensemble(members)
  workdirs = f"{tmp_path / 'w0'},{tmp_path / 'w1'}"
  out = finish(launch(workdirs, 2, "--mode=eval"))[0][0]
  two = dict(zip(*[iter(out.splitlines()[-1].split())] * 2))
  assert two["protocol"] == "dense" and two["models"] == "2"
  assert float(two["eval_loss"]) == pytest.approx(expected["eval_loss"], abs=1e-4)  # (printed to 4 decimals)
  assert float(two["eval_accuracy"]) == pytest.approx(expected["eval_accuracy"], abs=1e-4)
