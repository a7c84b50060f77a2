"""gs:// workdirs and data directories end to end, against a real GCS JSON API server on 127.0.0.1 (the `gcs`
fixture: gcp-storage-emulator in memory, with GCS's conditional writes and a read-only bucket added as a test
double, see tests/gcs_server.py). Every output is listed through the storage client, not through cnnjax."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from etils import epath

from cnnjax import checkpoint, cloud, data
from cnnjax import workdir as workdir_lib

from helpers import ROOT, interrupt, leaves, run, run_sweep

LENET = [
  "--config=configs/lenet5.py",
  "--config.batch_size=16",
  "--config.num_steps=12",
  "--config.checkpoint_every_steps=4",
  "--config.log_every_steps=2",
  "--config.eval_every_steps=12",
]


def _params(workdir: str, step: int) -> list[np.ndarray]:
  return list(leaves(checkpoint.read_state(f"{workdir}/checkpoints/{step}/state")["params"]))


def test_a_run_in_a_bucket_writes_everything_there_and_a_killed_run_resumes_bit_identical(gcs, tfds_dir):
  bucket = gcs.bucket("cnnjax-runs")
  args = [*LENET, f"--config.data_dir={tfds_dir}"]
  straight = run(*args, f"--workdir={bucket}/straight")
  assert straight.returncode == 0, straight.stderr
  assert "done: final step 12, test accuracy" in straight.stdout and "Traceback" not in straight.stderr
  written = gcs.objects(f"{bucket}/straight")
  assert {"config.json", "metrics.jsonl", "summary.json", "curves.png"} <= written, written
  assert any(name.startswith("tensorboard/events.out.tfevents.") for name in written), written
  assert {f"checkpoints/{step}/state/_METADATA" for step in (4, 8, 12)} <= written, written
  assert "owner.json" not in written  # released at the end
  lines = [json.loads(line) for line in epath.Path(f"{bucket}/straight/metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines if "train_loss" in line] == [2, 4, 6, 8, 10, 12]

  # killed at step 10: the save of step 4 has finished (a save waits for the one before), step 8's may not have
  killed = interrupt(args, f"{bucket}/killed", 10, [signal.SIGKILL], subprocess.DEVNULL)
  assert killed.returncode == -9
  assert "owner.json" in gcs.objects(f"{bucket}/killed")  # the dead run's claim, taken over by the rerun
  resumed = run(*args, f"--workdir={bucket}/killed")
  assert resumed.returncode == 0, resumed.stderr
  assert re.search(r"resumed at step [48]\b", resumed.stdout) and "its process no longer exists" in resumed.stdout, (
    resumed.stdout
  )
  for a, b in zip(_params(f"{bucket}/straight", 12), _params(f"{bucket}/killed", 12), strict=True):
    np.testing.assert_array_equal(a, b)

  evaluation = run(*args, f"--workdir={bucket}/straight", "--mode=eval")
  summary = json.loads(epath.Path(f"{bucket}/straight/summary.json").read_text())
  assert evaluation.returncode == 0, evaluation.stderr
  assert f"eval_accuracy {summary['eval_accuracy']:.4f}" in evaluation.stdout


def test_a_tfds_dataset_in_a_bucket_is_read_from_one_local_copy(gcs, local_cifar10, tmp_path, monkeypatch):
  monkeypatch.setattr(cloud, "CACHE", str(tmp_path / "cache"))
  bucket = gcs.bucket("cnnjax-data")
  for file in pathlib.Path(local_cifar10).rglob("*"):
    if file.is_file():
      epath.Path(file).copy(epath.Path(f"{bucket}/tfds") / str(file.relative_to(local_cifar10)))
  local, remote = data.load("cifar10", local_cifar10), data.load("cifar10", f"{bucket}/tfds")
  assert remote.num_classes == 10 and len(remote.train) == len(local.train) == 24
  for i in (0, 23):
    np.testing.assert_array_equal(remote.train[i]["image"], local.train[i]["image"])
    assert remote.train[i]["label"] == local.train[i]["label"]
  versions = lambda folder: sorted(p.name for p in (pathlib.Path(folder) / "cifar10").iterdir() if p.is_dir())
  assert versions(tmp_path / "cache" / "cnnjax-data" / "tfds") == versions(local_cifar10)
  # loaded again: the copy is used, not made again
  before = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("*.array_record*")}
  data.load("cifar10", f"{bucket}/tfds")
  assert before and before == {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").rglob("*.array_record*")}

  # and a run trains on it through cnnjax.main (the command's cache is its own XDG cache)
  trained = run(
    "--config=configs/lenet5.py",
    "--config.dataset=cifar10",
    "--config.channels=3",
    "--config.num_steps=2",
    "--config.batch_size=8",
    "--config.eval_every_steps=2",
    f"--config.data_dir={bucket}/tfds",
    f"--workdir={tmp_path / 'run'}",
    env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")},
  )
  assert trained.returncode == 0, trained.stderr
  assert "done: final step 2" in trained.stdout and "array_record reads local files only" in trained.stdout


def test_one_run_per_bucket_workdir_and_a_stale_claim_is_taken_over(gcs, monkeypatch):
  workdir = f"{gcs.bucket('cnnjax-claims')}/run"
  first = workdir_lib.Claim(workdir).acquire()
  try:
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"in use by another run: process {first.owner.pid} on host"):
      workdir_lib.Claim(workdir).acquire()
  finally:
    first.release()
  assert "run/owner.json" not in gcs.objects("gs://cnnjax-claims")

  # a claim from another host whose heartbeat stopped (a preempted VM): stale after STALE_AFTER_S
  stale = workdir_lib.Owner("job", "tpu-vm-7", 4242, 1.0, time.time() - 600, time.time() - 120, "python -m cnnjax.main")
  epath.Path(f"{workdir}/owner.json").write_text(json.dumps(stale.__dict__))
  # several runs race for it; GCS's conditional writes let exactly one win
  outcomes = []

  def contend():
    try:
      outcomes.append(workdir_lib.Claim(workdir).acquire())
    except workdir_lib.WorkdirBusy as e:
      outcomes.append(e)

  threads = [threading.Thread(target=contend) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  winners = [o for o in outcomes if isinstance(o, workdir_lib.Claim)]
  assert len(winners) == 1 and "host tpu-vm-7" in winners[0].took_over and "no heartbeat for 1" in winners[0].took_over
  assert all("in use by another run" in str(o) for o in outcomes if o not in winners)
  owner = json.loads(epath.Path(f"{workdir}/owner.json").read_text())
  assert owner["job"] == winners[0].owner.job and owner["host"] == socket.gethostname()

  # the winner's heartbeat is a conditional write too: a run that took the claim over is noticed
  monkeypatch.setattr(workdir_lib, "HEARTBEAT_S", 0.05)
  epath.Path(f"{workdir}/owner.json").write_text(json.dumps({**stale.__dict__, "heartbeat": time.time()}))
  deadline = time.time() + 10
  while winners[0].lost is None and time.time() < deadline:
    winners[0]._stop.wait(0.05)
  winners[0].release()
  with pytest.raises(
    workdir_lib.WorkdirBusy, match="no longer this run's: another run took it over: process 4242 on host tpu-vm-7"
  ):
    winners[0].check()


def without_credentials(tmp_path) -> dict:
  """An environment pointing at the real GCS, with nowhere credentials could come from."""
  env = dict(os.environ)
  for key in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING"):
    env.pop(key, None)
  env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
  env["CLOUDSDK_CONFIG"] = str(tmp_path / "gcloud")  # no `gcloud auth application-default login` there
  return env


@pytest.mark.parametrize(
  "case,bucket,verb,cause",
  [
    (
      "missing",
      "no-such-bucket",
      "write",
      "no such bucket (make one: gcloud storage buckets create gs://NAME --location=REGION)",
    ),
    (
      "read-only",
      "read-only-bucket",
      "write",
      "Permission denied (the account needs roles/storage.objectAdmin on the bucket)",
    ),
    (
      "no credentials",
      "cnnjax-runs",
      "read",
      "no Google Cloud credentials (on a laptop run `gcloud auth application-default login`; a TPU VM uses its "
      "service account)",
    ),
  ],
)
def test_a_bucket_that_is_missing_or_not_writable_or_no_credentials_stop_the_run_in_one_line(
  gcs, tfds_dir, tmp_path, case, bucket, verb, cause
):
  if case != "missing":
    gcs.bucket(bucket)
  env = without_credentials(tmp_path) if case == "no credentials" else dict(os.environ)
  result = run(*LENET, f"--config.data_dir={tfds_dir}", f"--workdir=gs://{bucket}/run", env=env)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines() == [f"error: cannot {verb} gs://{bucket}/run/owner.json: {cause}."], (
    result.stderr
  )
  assert "step 1/" not in result.stdout  # before any training step
  assert gcs.client.lookup_bucket("no-such-bucket") is None  # and never made one


def test_cloud_errors_name_their_cause():
  from google.api_core import exceptions as api
  from google.auth import exceptions as auth

  assert "gcloud auth application-default login" in workdir_lib.storage_reason(auth.DefaultCredentialsError("none"))
  assert workdir_lib.storage_reason(OSError("Forbidden: https://storage.googleapis.com/...")) == "Permission denied"
  assert workdir_lib.storage_reason(api.NotFound("The specified bucket does not exist.")).startswith("no such bucket")
  assert workdir_lib.storage_reason(ValueError("a bug")) is None


ONE_RUN = """from cnnjax.sweep import grid


def get_sweep():
  return grid(config=["configs/lenet5.py"], num_steps=[2], log_every_steps=[1], eval_every_steps=[2])
"""


def test_a_sweep_in_a_bucket_logs_and_summarises_there(gcs, tfds_dir, tmp_path):
  file, workdir = tmp_path / "one.py", f"{gcs.bucket('cnnjax-sweeps')}/sweep"
  file.write_text(ONE_RUN)
  # two slots of one CPU core each, whatever cores the machine has
  out = run_sweep(
    file, workdir, "--parallel=2", "--accelerators=cpu:2", env={**os.environ, "TFDS_DATA_DIR": str(tfds_dir)}
  )
  name = "lenet5__eval_every_steps=2__log_every_steps=1__num_steps=2"
  assert f"{name}: done" in out and "1 of 1 runs finished" in out
  written = gcs.objects(workdir)
  assert {"summary.md", "summary.csv", "summary.png", f"{name}.log", f"{name}/summary.json"} <= written, written
  assert "done: final step 2" in epath.Path(f"{workdir}/{name}.log").read_text()


def test_a_sweeps_commands_on_a_bucket_without_credentials_stop_in_one_line_at_once(tmp_path):
  """README's `--print_commands` line with no credentials: the same line as cnnjax.main gives, in seconds (gcsfs
  alone retried for a minute and printed its tracebacks)."""
  start = time.time()
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "cnnjax.sweep",
      "--sweep=configs/sweeps/degradation.py",
      "--workdir=gs://cnnjax-runs/deg",
      "--print_commands",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=without_credentials(tmp_path),
  )
  assert result.returncode == 1 and result.stdout == "", result.stderr
  assert result.stderr.strip().splitlines() == [
    "error: cannot read gs://cnnjax-runs/deg: no Google Cloud credentials (on a laptop run `gcloud auth "
    "application-default login`; a TPU VM uses its service account)."
  ]
  assert time.time() - start < 30
