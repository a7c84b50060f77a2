"""What several test files share: the repository's root, running the commands as a user does, small configs."""

import contextlib
import pathlib
import subprocess
import sys
import time

import numpy as np
from absl import flags
from ml_collections import config_flags

from cnnjax import config as config_lib

ROOT = pathlib.Path(__file__).parent.parent  # config paths are relative to the repository root


def main(*args):
  return [sys.executable, "-m", "cnnjax.main", *args]


def run(*args, timeout=300, env=None):
  return subprocess.run(main(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def leaves(tree):
  """The arrays of a nested dict, in sorted key order."""
  if isinstance(tree, dict):
    for key in sorted(tree):
      yield from leaves(tree[key])
  else:
    yield np.asarray(tree)


def interrupt(args, workdir, at_step: int, signals, log) -> subprocess.Popen:
  """Run cnnjax.main until it logs `at_step`, then send `signals` (one after another); returns the ended process.

  Its stderr goes to the file `log` (a path; or subprocess.DEVNULL). A second signal is sent once the run has
  said it is stopping, so that it arrives while the first is handled (two sent together would merge into one)."""
  stopping = lambda: pathlib.Path(log).read_text().count("stopping after this step")
  with contextlib.ExitStack() as stack:
    err = log if log is subprocess.DEVNULL else stack.enter_context(open(log, "a"))
    process = subprocess.Popen(
      main(*args, f"--workdir={workdir}"), stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT
    )
    for line in process.stdout:
      if line.startswith(f"step {at_step}/"):
        for i, signum in enumerate(signals):
          before = stopping() if i + 1 < len(signals) else None
          process.send_signal(signum)
          deadline = time.time() + 10
          while before is not None and stopping() == before and time.time() < deadline:
            time.sleep(0.001)
        break
    process.communicate(timeout=120)
  return process


# a sweep file of two LeNet-5 runs of four steps each
TINY = """from cnnjax.sweep import grid


def get_sweep():
  return grid(config=["configs/lenet5.py"], learning_rate=[0.01, 0.05], num_steps=[4], log_every_steps=[2],
              eval_every_steps=[2])
"""


def run_sweep(file, workdir, *args, env=None):
  result = subprocess.run(
    [sys.executable, "-m", "cnnjax.sweep", f"--sweep={file}", f"--workdir={workdir}", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def command_line(*args):
  """The config flag `python -m cnnjax.main --config=... --config.X=...` gets, parsed by the real flag machinery
  (which finds the overrides in sys.argv)."""
  argv = ["cnnjax", *[a.replace("configs/", f"{ROOT}/configs/", 1) for a in args]]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  saved, sys.argv = sys.argv, argv
  try:
    values(argv)
  finally:
    sys.argv = saved
  return values["config"]


def load_config(name: str, arg: str = "", **overrides):
  """configs/NAME.py's get_config(ARG), with `overrides` set."""
  config = config_lib.load(name, arg)
  config.update(overrides)
  return config


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth image with detail everywhere (no two crops alike), uint8 RGB."""
  y, x = np.mgrid[0:height, 0:width]
  rng = np.random.default_rng(seed)
  waves = [np.sin(x / rng.uniform(5, 40) + y / rng.uniform(5, 40) + rng.uniform(0, 6)) for _ in range(3)]
  noise = rng.integers(0, 40, (height, width, 3))
  return (np.stack(waves, -1) * 100 + 110 + noise).clip(0, 255).astype(np.uint8)


def thin_resnet(data_dir, **fields):
  """A ResNet-18 of one thin block per stage on the suite's ImageNet-format dataset at 32x32: cheap to evaluate."""
  config = load_config("resnet", "18", dataset="imagenet2012", data_dir=data_dir, image_size=32, batch_size=8)
  config.model_options.update(stage_sizes=(1, 1, 1, 1), widths=(8, 8, 8, 8))
  config.update(fields)
  return config


def initial_workdir(config, path):
  """A workdir at `path` holding `config`'s initial state as its step-0 checkpoint; returns (run, state)."""
  from cnnjax import checkpoint, train

  run = train.build(config)
  state = train.initial_state(run)
  ckpt = checkpoint.Checkpointer(str(path), config)
  ckpt.save(0, state, {})
  ckpt.wait()
  ckpt.close()
  return run, state
