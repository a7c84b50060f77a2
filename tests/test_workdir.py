"""cnnjax.workdir: one owner per workdir (claims, heartbeats, takeovers), storage failures as one line."""

import dataclasses
import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cnnjax import workdir


def write_owner(folder, **fields):
  owner = dataclasses.replace(workdir.Owner.here(), **fields)
  (folder / workdir.CLAIM_FILE).write_text(json.dumps(dataclasses.asdict(owner)))
  return owner


def dead_pid() -> int:
  """The pid of a process of this host that has exited."""
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_a_second_claim_is_refused_naming_the_owner_and_a_released_one_is_free(tmp_path):
  with workdir.claim(tmp_path, announce=pytest.fail) as first:
    with pytest.raises(workdir.WorkdirBusy) as refused:
      workdir.Claim(tmp_path).acquire()
    message = str(refused.value)
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message and "started 20" in message
    assert first.owner.job in (tmp_path / workdir.CLAIM_FILE).read_text()
  assert not (tmp_path / workdir.CLAIM_FILE).exists()
  workdir.Claim(tmp_path).acquire().release()


def test_the_claim_of_a_process_that_is_gone_is_taken_over_at_once(tmp_path):
  write_owner(tmp_path, pid=dead_pid(), pid_started=1.0)  # a fresh heartbeat does not keep a dead process's claim
  notes = []
  with workdir.claim(tmp_path, announce=notes.append):
    pass
  assert len(notes) == 1 and "its process no longer exists" in notes[0]


def test_a_claim_from_another_host_goes_stale_only_without_heartbeats(tmp_path):
  write_owner(tmp_path, host="tpu-worker-7", heartbeat=time.time() - 5)
  with pytest.raises(workdir.WorkdirBusy, match="on host tpu-worker-7"):
    workdir.Claim(tmp_path).acquire()
  write_owner(tmp_path, host="tpu-worker-7", heartbeat=time.time() - workdir.STALE_AFTER_S - 5)
  notes = []
  with workdir.claim(tmp_path, announce=notes.append):
    pass
  assert "no heartbeat for" in notes[0]


def test_a_cut_short_claim_file_is_taken_over(tmp_path):
  (tmp_path / workdir.CLAIM_FILE).write_text('{"job": "abc", "host"')
  notes = []
  with workdir.claim(tmp_path, announce=notes.append):
    pass
  assert "an unreadable owner.json" in notes[0]


RACE = """
import sys, time
from cnnjax import workdir
time.sleep(float(sys.argv[2]) - time.time())  # all start together
try:
  claim = workdir.Claim(sys.argv[1]).acquire()
except workdir.WorkdirBusy:
  print("refused")
else:
  print("won")
  time.sleep(1.5)  # hold it while the others decide
  claim.release()
"""


def test_of_several_runs_racing_for_a_stale_claim_exactly_one_wins(tmp_path):
  write_owner(tmp_path, pid=dead_pid())
  start = str(time.time() + 2.0)
  racers = [
    subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), start], stdout=subprocess.PIPE, text=True)
    for _ in range(4)
  ]
  outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
  assert outcomes == ["refused", "refused", "refused", "won"]


def test_a_run_learns_at_its_next_heartbeat_that_it_was_taken_over(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir, "HEARTBEAT_S", 0.05)
  held = workdir.Claim(tmp_path).acquire()
  held.check()
  other = write_owner(tmp_path, host="elsewhere", pid=4242)
  deadline = time.time() + 10
  while held.lost is None and time.time() < deadline:
    time.sleep(0.02)
  with pytest.raises(workdir.WorkdirBusy, match="process 4242 on host elsewhere"):
    held.check()
  held.release()
  assert other.job in (tmp_path / workdir.CLAIM_FILE).read_text()  # the new owner's claim is left alone


def test_heartbeats_move_the_claims_heartbeat_forward(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir, "HEARTBEAT_S", 0.05)
  with workdir.claim(tmp_path) as held:
    first = json.loads((tmp_path / workdir.CLAIM_FILE).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / workdir.CLAIM_FILE).read_text())["heartbeat"] > first and held.lost is None


@pytest.mark.parametrize(
  "error,reason",
  [
    (OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"), "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/w/config.json"), "Permission denied"),
    # tensorstore (Orbax) puts the OS error inside its own message
    (
      ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.F6.bias/0" in OCDBT database at local file "/w/c/": '
        "Failed to write 180508 bytes to file 13: No space left on device [os_error_code='28']"
      ),
      "No space left on device",
    ),
    (ValueError("unknown model 'lenet6'"), None),  # not a storage failure: left as it is
  ],
)
def test_storage_failures_are_recognised_by_their_cause(error, reason):
  assert workdir.storage_reason(error) == reason


def test_a_storage_failure_becomes_one_line_with_the_file_the_cause_and_what_to_do():
  advice = lambda reason: workdir.advice(reason, "/w/checkpoints", 230)
  with pytest.raises(workdir.WorkdirError) as failed, workdir.storage_errors(advice):
    raise PermissionError(errno.EACCES, "Permission denied", "/w/metrics.jsonl")
  assert str(failed.value) == (
    "cannot write /w/metrics.jsonl: Permission denied. The last intact checkpoint is step "
    "230 (/w/checkpoints/230): make it writable and rerun the same command to resume "
    "from it."
  )
  with pytest.raises(KeyError), workdir.storage_errors(advice):  # anything else passes unchanged
    raise KeyError("a bug")
  assert "start again" in workdir.advice("No space left on device", "/w/checkpoints", None)


def test_an_appender_keeps_whole_records_and_write_text_replaces_a_file_whole(tmp_path):
  log = workdir.Appender(tmp_path / "log")
  log.append(b"one\n")
  workdir.Appender(tmp_path / "log").append(b"two\n")  # a resumed run appends to what is there
  assert (tmp_path / "log").read_bytes() == b"one\ntwo\n"
  workdir.write_text(tmp_path / "summary.json", "{}")
  workdir.write_text(tmp_path / "summary.json", '{"a": 1}')
  assert (tmp_path / "summary.json").read_text() == '{"a": 1}' and len(list(tmp_path.iterdir())) == 2
