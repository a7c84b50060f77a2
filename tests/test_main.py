"""`python -m cnnjax.main` as a user runs it: the quickstart; stops (SIGKILL, SIGTERM, Ctrl-C) and resumes; one run per
workdir; full and read-only disks; bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cnnjax import checkpoint, metrics
from cnnjax import config as config_lib

from helpers import ROOT, interrupt, leaves, main, run


def _cache_entries(folder) -> dict:
  return {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}


def test_quickstart_end_to_end(tfds_dir, tmp_path):
  workdir, cache = tmp_path / "run", tmp_path / "xla-cache"
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}  # a cache of this test's own, empty at first
  env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)  # the command's own setting, not the suite's
  args = ["--config=configs/lenet5.py", "--config.num_epochs=2", f"--config.data_dir={tfds_dir}"]
  result = run(*args, f"--workdir={workdir}", env=env)
  assert result.returncode == 0, result.stderr
  assert "done: final step 92, test accuracy" in result.stdout
  lines = metrics.read_metrics(workdir / "metrics.jsonl")
  train_lines = [line for line in lines if "train_loss" in line]
  eval_lines = [line for line in lines if "eval_loss" in line]
  assert {"step", "epoch", "train_loss", "train_accuracy", "learning_rate", "img_per_s"} <= set(train_lines[0])
  assert {"step", "epoch", "eval_loss", "eval_accuracy"} <= set(eval_lines[0]) and len(eval_lines) == 2
  assert eval_lines[-1]["eval_accuracy"] > 0.85 and train_lines[-1]["train_loss"] < train_lines[0]["train_loss"]
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
  summary = json.loads((workdir / "summary.json").read_text())
  evaluation = run("--config=configs/lenet5.py", f"--config.data_dir={tfds_dir}", f"--workdir={workdir}", "--mode=eval")
  assert evaluation.returncode == 0, evaluation.stderr
  assert f"eval_accuracy {summary['eval_accuracy']:.4f}" in evaluation.stdout
  # docs/training.md: "a rerun or a resume of the same config starts without compiling": every program it needs is
  # in the cache
  # the first run filled, so it writes no entry (a program compiled again would be written again)
  compiled = _cache_entries(cache)
  assert len(compiled) >= 3  # init, the train step, the eval step at least
  rerun = run(*args, f"--workdir={tmp_path / 'rerun'}", env=env)
  assert rerun.returncode == 0 and "done: final step 92" in rerun.stdout, rerun.stderr
  assert _cache_entries(cache) == compiled


def _final_params(workdir, step):
  return checkpoint.read_state(workdir / "checkpoints" / str(step) / "state")["params"]


# A small net with BatchNorm and dropout (VGG-11 with BN, thin), so a resume must restore the BatchNorm statistics
# and reproduce the dropout masks to end bit for bit where an uninterrupted run ends.
TINY_VGG = [
  "--config=configs/vgg.py:11,bn,local",
  "--config.model_options.widths=4,4,8,8,8",
  "--config.model_options.fc_width=16",
  "--config.image_size=16",
  "--config.batch_size=16",
]


def test_runs_stopped_or_killed_at_random_points_resume_to_bit_identical_parameters(tfds_dir, tmp_path):
  """SIGKILL, SIGTERM, Ctrl-C and a double Ctrl-C, each at a random step, each followed by the same command:
  the run ends with the parameters and BatchNorm statistics of a run that was never interrupted."""
  args = [
    *TINY_VGG,
    f"--config.data_dir={tfds_dir}",
    "--config.num_steps=40",
    "--config.checkpoint_every_steps=4",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=1000",
  ]
  straight = run(*args, f"--workdir={tmp_path / 'straight'}")
  assert straight.returncode == 0, straight.stderr
  rng = np.random.default_rng(int(time.time()))
  cuts = sorted(rng.choice(np.arange(3, 37), 4, replace=False))
  events = [(signal.SIGKILL,), (signal.SIGTERM,), (signal.SIGINT,), (signal.SIGINT, signal.SIGINT)]
  rng.shuffle(events)
  workdir, log = tmp_path / "interrupted", tmp_path / "log"
  done = 0
  for at_step, signals in zip(cuts, events):
    if at_step <= done:  # the resumed run starts after its last checkpoint: interrupt it a step later
      at_step = done + 1
    process = interrupt(args, workdir, at_step, signals, log)
    what = f"{'+'.join(s.name for s in signals)} at step {at_step} (steps {cuts})"
    expected = {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[signals[0]]
    assert process.returncode == expected, what
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    if signals in ((signal.SIGTERM,), (signal.SIGINT,)):  # a checkpoint of the step it stopped at
      assert max(saved) >= at_step, what
    done = max(saved, default=0)
  errors = log.read_text()
  assert "stopped by SIGTERM at step" in errors and "stopped by Ctrl-C at step" in errors, errors
  assert "stopped at once by a second Ctrl-C" in errors and "Traceback" not in errors, errors
  resumed = run(*args, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr
  a, b = list(leaves(_final_params(tmp_path / "straight", 40))), list(leaves(_final_params(workdir, 40)))
  stats = [
    checkpoint.read_state(w / "checkpoints" / "40" / "state")["batch_stats"] for w in (tmp_path / "straight", workdir)
  ]
  assert len(a) == len(b) == 38  # VGG-11: 8 convs with a bias and BatchNorm (4 tensors each), fc6-fc8 (2 each)
  for x, y in zip(a + list(leaves(stats[0])), b + list(leaves(stats[1]))):
    np.testing.assert_array_equal(x, y)


def test_a_second_run_on_a_workdir_is_refused_until_the_first_is_gone(tfds_dir, tmp_path):
  args = [
    "--config=configs/lenet5.py",
    f"--config.data_dir={tfds_dir}",
    "--config.batch_size=16",
    "--config.log_every_steps=2",
    "--config.eval_every_steps=100000",
    f"--workdir={tmp_path}",
  ]
  first = subprocess.Popen(
    main(*args, "--config.num_steps=100000"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
  )
  for line in first.stdout:
    if line.startswith("step "):
      break
  second = run(*args, "--config.num_steps=4")
  assert second.returncode == 1 and "Traceback" not in second.stderr
  assert f"is in use by another run: process {first.pid} on host" in second.stderr, second.stderr
  first.kill()
  first.wait()
  third = run(*args, "--config.num_steps=4")
  assert third.returncode == 0, third.stderr
  assert f"note: took over {tmp_path} from a run that is gone (process {first.pid}" in third.stdout
  assert "its process no longer exists" in third.stdout and "done: final step 4" in third.stdout


def namespace_script(tmp_path, script: str) -> subprocess.CompletedProcess:
  """Run a bash script as root of a user and mount namespace of its own, where it can mount a small tmpfs: a full
  or read-only disk for real, without touching the machine's."""
  if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
    pytest.skip("this machine does not let a process make a user namespace (unshare -Urm), needed to mount a tmpfs")
  path = tmp_path / "script.sh"
  path.write_text(f"set -u\ncd {ROOT}\n{script}")
  return subprocess.run(["unshare", "-Urm", "bash", str(path)], capture_output=True, text=True, timeout=400)


def test_a_full_disk_stops_with_one_line_and_the_rerun_resumes_once_there_is_room(tfds_dir, tmp_path):
  disk, out = tmp_path / "disk", tmp_path / "out"
  disk.mkdir(), out.mkdir()
  args = " ".join(
    [
      "--config=configs/lenet5.py",
      f"--config.data_dir={tfds_dir}",
      "--config.num_steps=40",
      "--config.checkpoint_every_steps=8",
      "--config.keep_checkpoints=10",
      "--config.log_every_steps=8",
      f"--workdir={disk}/w",
    ]
  )
  read_only_args = args.replace(str(disk), str(tmp_path / "ro"))
  # a LeNet-5 checkpoint (parameters and momentum) takes about 0.5 MB: 1.3 MB hold two of them, not five
  result = namespace_script(
    tmp_path,
    f"""
mount -t tmpfs -o size=1300k tmpfs {disk}
python -m cnnjax.main {args} > {out}/full.out 2> {out}/full.err; echo $? > {out}/full.rc
ls {disk}/w/checkpoints > {out}/full.ls
mount -o remount,size=20m {disk}
python -m cnnjax.main {args} > {out}/room.out 2> {out}/room.err; echo $? > {out}/room.rc
ls {disk}/w/checkpoints > {out}/room.ls
mkdir -p {tmp_path}/ro && mount -t tmpfs -o ro tmpfs {tmp_path}/ro
python -m cnnjax.main {read_only_args} > {out}/ro.out 2> {out}/ro.err; echo $? > {out}/ro.rc
""",
  )
  assert result.returncode == 0, result.stderr
  read = lambda name: (out / name).read_text()
  error = read("full.err").strip()
  assert read("full.rc").strip() == "1" and len(error.splitlines()) == 1, error  # one line, no traceback
  saved = sorted(int(n) for n in read("full.ls").split() if n.isdigit())
  assert error.startswith(
    f"error: cannot save the checkpoint of step {max(saved) + 8} in {disk}/w/checkpoints: "
    f"No space left on device. The last intact checkpoint is step {max(saved)} ({disk}/w/checkpoints/"
    f"{max(saved)}): free some space and rerun the same command to resume from it."
  ), error
  assert any("orbax-checkpoint-tmp" in n for n in read("full.ls").split())  # the unfinished save's leftovers ...
  assert read("room.rc").strip() == "0", read("room.err")
  assert f"resumed at step {max(saved)}" in read("room.out") and "done: final step 40" in read("room.out")
  assert not any("tmp" in n for n in read("room.ls").split())  # ... are removed, never taken for a checkpoint
  assert (
    read("ro.rc").strip() == "1"
    and read("ro.err").strip() == f"error: cannot write {tmp_path}/ro/w: Read-only file system."
  )


@pytest.mark.parametrize(
  "args,message",
  [
    (
      ["--config=configs/lenet5.py", "--config.batch_size=8", "--config.learning_rat=0.1"],
      "error: unknown field learning_rat (did you mean learning_rate?)\n",
    ),
    (
      ["--config=configs/cifar_resnet.py:20,local", "--config.model_options.widht=(4,8,16)"],
      "error: unknown field model_options.widht (did you mean model_options.widths?)\n",
    ),
    (
      ["--config=configs/lenet7.py"],
      f"error: --config=configs/lenet7.py: configs/lenet7.py does not exist (looked for from {ROOT}); the configs are "
      f"alexnet.py, cifar_resnet.py, finetune.py, googlenet.py, lenet5.py, resnet.py, vgg.py in {ROOT / 'configs'}\n",
    ),
    (["--config=configs/lenet5.py", "--config.batch_size=big"], "--config.batch_size=big: invalid literal"),
    (["--config=configs/lenet5.py", "--config.model=lenet6"], "unknown model 'lenet6'"),
    (
      ["--config=configs/lenet5.py", "--config.batch_size=3000"],
      "error: batch size 3,000 is larger than the 1,500 training examples of digits: the largest batch that fits is "
      "1,496 (187 per device on 8 device(s))\n",
    ),
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


def test_a_config_path_from_another_folder_names_that_folder_and_the_configs(tmp_path):
  """The quickstart run from a folder other than the repository's root: one line, not ml_collections' traceback."""
  result = subprocess.run(main("--config=configs/lenet5.py"), capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert result.returncode == 1 and result.stderr.splitlines() == [
    f"error: --config=configs/lenet5.py: configs/lenet5.py does not exist (looked for from {tmp_path}); the configs "
    f"are alexnet.py, cifar_resnet.py, finetune.py, googlenet.py, lenet5.py, resnet.py, vgg.py in {ROOT / 'configs'}"
  ]


def test_commands_keep_compiled_programs_in_a_per_user_cache_unless_told_where(tmp_path):
  code = "import jax; from cnnjax import cli; cli.start(); print(jax.config.jax_compilation_cache_dir)"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path)}
  chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert chosen.strip() == str(tmp_path / "cnnjax" / "jax")
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
  chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert chosen.strip() == str(tmp_path / "mine")


@pytest.mark.parametrize(
  "name,arg,options",
  [
    ("resnet", "50", {"stride_in": "v1.5", "remat": "blocks"}),
    ("cifar_resnet", "20", {"remat": "norms", "preactivation": True}),
  ],
)
def test_model_options_the_configs_document_are_fields_of_the_locked_config(name, arg, options):
  """`--config.model_options.X=V` sets a field of the locked config: X must be in the config (a new key is refused)."""
  config = config_lib.load(name, arg)
  config.lock()
  config.model_options.update(options)
  assert dict(config.model_options) | options == dict(config.model_options)


def test_ctrl_c_outside_training_ends_every_command_in_one_line():
  """Evaluation, the zoo, the experiments: wherever Ctrl-C lands outside a training loop, cli.run stops at once."""
  code = "from cnnjax import cli\ndef main(argv):\n  raise KeyboardInterrupt\ncli.run(main)"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert result.returncode == 130 and result.stderr == "error: stopped by Ctrl-C\n"


def test_a_truncated_jpeg_with_bad_images_stop_names_the_file_not_a_disk_problem(tmp_path):
  """The decoding error leaves as what it is: the file and the reason (a storage error is only what a write raises)."""
  from PIL import Image

  rng = np.random.default_rng(0)
  for split, count in (("train", 16), ("test", 2)):
    (tmp_path / "images" / split / "cat").mkdir(parents=True)
    for i in range(count):
      Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(
        tmp_path / "images" / split / "cat" / f"{i}.jpg"
      )
  cut = tmp_path / "images" / "train" / "cat" / "3.jpg"
  cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])  # the header reads, the data is cut short
  result = run(
    "--config=configs/lenet5.py",
    f"--config.dataset=imagefolder:{tmp_path / 'images'}",
    "--config.bad_images=stop",
    "--config.model_options.head=dense",
    "--config.batch_size=8",
    "--config.num_steps=4",
    f"--workdir={tmp_path / 'w'}",
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith(f"error: cannot decode image {cut}: image file is truncated"), error
  assert "cannot write" not in result.stderr and "checkpoint" not in error


def test_a_workdir_is_evaluated_on_another_dataset_with_its_own_config_and_overrides(tfds_dir, tmp_path):
  """`--mode=eval --workdir=W --config.dataset=imagefolder:DIR` without --config once failed with "Unknown command
  line flag 'config.dataset'". The dataset and the batch size may change; the network may not."""
  from PIL import Image

  from cnnjax import data

  digits = data.load("digits", tfds_dir).test
  firsts = {}  # two test digits of each class, as image files in a folder per class
  for i in range(len(digits)):
    firsts.setdefault(int(digits[i]["label"]), []).append(i)
  for i in [i for indices in firsts.values() for i in indices[:2]]:
    example = digits[i]
    (tmp_path / "mine" / "test" / str(example["label"])).mkdir(parents=True, exist_ok=True)
    (tmp_path / "mine" / "train" / str(example["label"])).mkdir(parents=True, exist_ok=True)
    Image.fromarray(example["image"][..., 0]).save(tmp_path / "mine" / "test" / str(example["label"]) / f"{i}.png")
    Image.fromarray(example["image"][..., 0]).save(tmp_path / "mine" / "train" / str(example["label"]) / f"{i}.png")
  workdir = tmp_path / "w"
  trained = run(
    "--config=configs/lenet5.py", f"--config.data_dir={tfds_dir}", "--config.num_steps=2", f"--workdir={workdir}"
  )
  assert trained.returncode == 0, trained.stderr
  mine = f"--config.dataset=imagefolder:{tmp_path / 'mine'}"
  evaluated = run("--mode=eval", f"--workdir={workdir}", mine, "--config.batch_size=16")
  assert evaluated.returncode == 0, evaluated.stderr
  assert evaluated.stdout.strip().splitlines()[-1].startswith("step 2 protocol center eval_loss ")
  refused = run("--mode=eval", f"--workdir={workdir}", "--config.model=alexnet")
  assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
    "error: --config.model: a workdir is evaluated as the network it trained; give a --config to change it"
  ]
  misspelt = run("--mode=eval", f"--workdir={workdir}", "--config.batch_siz=16")
  assert misspelt.stderr.strip().splitlines() == ["error: unknown field batch_siz (did you mean batch_size?)"]
