"""`python -m cnnjax.main` as a user runs it: the quickstart, resuming after SIGKILL, SIGTERM, bad input."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnnjax import config as config_lib, metrics

ROOT = pathlib.Path(__file__).parent.parent  # config paths are relative to the repository root


def main(*args):
  return [sys.executable, "-m", "cnnjax.main", *args]


def run(*args, timeout=300, env=None):
  return subprocess.run(main(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_quickstart_end_to_end(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  result = run("--config=configs/lenet5.py", "--config.num_epochs=4", f"--config.data_dir={tfds_dir}", f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr
  assert "done: final step 184, test accuracy" in result.stdout
  lines = metrics.read_metrics(workdir / "metrics.jsonl")
  train_lines = [l for l in lines if "train_loss" in l]
  eval_lines = [l for l in lines if "eval_loss" in l]
  assert {"step", "epoch", "train_loss", "train_accuracy", "learning_rate", "img_per_s"} <= set(train_lines[0])
  assert {"step", "epoch", "eval_loss", "eval_accuracy"} <= set(eval_lines[0]) and len(eval_lines) == 4
  assert eval_lines[-1]["eval_accuracy"] > 0.85 and train_lines[-1]["train_loss"] < train_lines[0]["train_loss"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
  summary = json.loads((workdir / "summary.json").read_text())
  evaluation = run("--config=configs/lenet5.py", f"--config.data_dir={tfds_dir}", f"--workdir={workdir}", "--mode=eval")
  assert evaluation.returncode == 0, evaluation.stderr
  assert f"eval_accuracy {summary['eval_accuracy']:.4f}" in evaluation.stdout


def _final_params(workdir, step):
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["params"]


def test_killed_run_resumes_to_bit_identical_parameters(tfds_dir, tmp_path):
  args = ["--config=configs/lenet5.py", f"--config.data_dir={tfds_dir}", "--config.num_steps=60", "--config.batch_size=16",
          "--config.checkpoint_every_steps=10", "--config.log_every_steps=5", "--config.eval_every_steps=1000"]  # fmt: skip
  straight = run(*args, f"--workdir={tmp_path / 'straight'}")
  assert straight.returncode == 0, straight.stderr
  killed = tmp_path / "killed"
  with open(tmp_path / "log", "w") as log:
    process = subprocess.Popen(main(*args, f"--workdir={killed}"), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
      done = [int(p.name) for p in (killed / "checkpoints").glob("*") if p.name.isdigit()] if (killed / "checkpoints").exists() else []
      if done and max(done) >= 20:
        process.send_signal(signal.SIGKILL)
        break
      time.sleep(0.05)
    process.wait()
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-way"
  resumed = run(*args, f"--workdir={killed}")
  assert resumed.returncode == 0, resumed.stderr
  assert "resumed at step" in resumed.stdout
  a, b = _final_params(tmp_path / "straight", 60), _final_params(killed, 60)
  a, b = list(_leaves(a)), list(_leaves(b))
  assert len(a) == len(b) == 16  # LeNet-5's parameter tensors
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def _leaves(tree):
  if isinstance(tree, dict):
    for key in sorted(tree):
      yield from _leaves(tree[key])
  else:
    yield np.asarray(tree)


def test_sigterm_saves_a_checkpoint_and_exits(tfds_dir, tmp_path):
  args = ["--config=configs/lenet5.py", f"--config.data_dir={tfds_dir}", "--config.num_steps=100000", "--config.batch_size=16",
          "--config.log_every_steps=5", "--config.eval_every_steps=100000", f"--workdir={tmp_path}"]  # fmt: skip
  process = subprocess.Popen(main(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  for line in process.stdout:
    if line.startswith("step 10/"):
      process.send_signal(signal.SIGTERM)
      break
  out, err = process.communicate(timeout=120)
  assert process.returncode == 143, err
  assert "stopped by SIGTERM at step" in err and "Rerun the same command to resume" in err
  stopped_at = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
  assert stopped_at >= 10 and (tmp_path / "checkpoints" / str(stopped_at) / "state").is_dir()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config=configs/lenet5.py", "--config.batch_size=8", "--config.learning_rat=0.1"], "config.learning_rat is not a field"),
        (["--config=configs/lenet5.py", "--config.batch_size=big"], "--config.batch_size=big: invalid literal"),
        (["--config=configs/lenet5.py", "--config.model=lenet6"], "unknown model 'lenet6'"),
        (["--config=configs/lenet5.py", "--config.dataset=cifar11"], "unknown dataset 'cifar11'"),
        (["--config=configs/resnet.py:51"], "resnet config argument '51'"),
        (["--config=configs/googlenet.py"], "--config=configs/googlenet.py:local"),  # after where and how to prepare it
        (["--config=configs/resnet.py:50"], "--config=configs/resnet.py:50,local"),
    ],
)
def test_bad_input_exits_with_one_clear_message(args, message, tmp_path):
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path)}
  result = run(*args, f"--workdir={tmp_path / 'w'}", env=env, timeout=120)
  assert result.returncode == 1
  assert message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_commands_keep_compiled_programs_in_a_per_user_cache_unless_told_where(tmp_path):
  code = "import jax; from cnnjax import cli; cli.start(); print(jax.config.jax_compilation_cache_dir)"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path)}
  chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert chosen.strip() == str(tmp_path / "cnnjax" / "jax")
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
  chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert chosen.strip() == str(tmp_path / "mine")


@pytest.mark.parametrize("name,arg,options", [
    ("resnet", "50", {"stride_in": "v1.5", "remat": "blocks"}),
    ("cifar_resnet", "20", {"remat": "norms", "preactivation": True}),
])  # fmt: skip
def test_model_options_the_configs_document_are_fields_of_the_locked_config(name, arg, options):
  """`--config.model_options.X=V` sets a field of the locked config: X must be in the config (a new key is refused)."""
  config = config_lib.load(name, arg)
  config.lock()
  config.model_options.update(options)
  assert dict(config.model_options) | options == dict(config.model_options)
