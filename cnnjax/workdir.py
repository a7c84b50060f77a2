"""Everything a run does with its workdir besides the checkpoint arrays: who owns it, the files it appends to,
and what a failed write means to the user. Paths are `etils.epath` paths, so a workdir is a local folder or an
object-store URL (gs://BUCKET/...) alike.

One run per workdir: `claim(workdir)` writes WORKDIR/owner.json (job id, host, process id, command, start
time, heartbeat) and refreshes its heartbeat from a background thread while the run lives. A second run reads
the claim and refuses to start, naming the owner. A claim whose owner is gone is taken over, with a note: at
once when the owner ran on this host and its process no longer exists (SIGKILL, a crash, a reboot), else once
its heartbeat is older than STALE_AFTER_S (a preempted VM, a host that died). Taking over is a compare-and-swap,
so of two runs racing for a stale claim exactly one wins: on a local disk the read-decide-write happens under
an exclusive `flock` of the claim file; object stores have no locks, so there it is a write conditioned on
the object's generation (GCS's `ifGenerationMatch`), which the store applies atomically. The heartbeat is a
compare-and-swap too: a run whose claim was taken over learns it at its next heartbeat and stops before it
writes anything else.
"""

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import re
import shlex
import socket
import sys
import tempfile
import threading
import time
import uuid

import numpy as np
import psutil
from etils import epath

from cnnjax import cloud
from cnnjax.errors import WorkdirBusy, WorkdirError

CLAIM_FILE = "owner.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0  # six missed heartbeats: the owner is gone


def resolve(path) -> epath.Path:
  """The workdir as an epath.Path: URLs as given, local paths made absolute (Orbax refuses relative ones)."""
  path = str(path)
  return epath.Path(path if is_remote(path) else os.path.abspath(os.path.expanduser(path)))


def is_remote(path) -> bool:
  return "://" in str(path)


# tensorstore (Orbax's array writer) reports an OS error inside its own message: "... [os_error_code='28']"
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def storage_reason(error: BaseException) -> str | None:
  """What went wrong in a failed write, in a few words ('No space left on device'); None if `error` is not a
  storage failure (a bug, a bad value), so that it is not dressed up as one."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno:
      return os.strerror(e.errno)
    match = _OS_ERROR_CODE.search(str(e))
    if match:
      return os.strerror(int(match.group(1)))
    if "google.api_core" in sys.modules and (why := cloud.reason(e)):  # a Cloud Storage client's (gs://)
      return why
    if isinstance(e, OSError):
      first = str(e).splitlines()[0] if str(e) else ""
      if first.startswith("Forbidden"):  # gcsfs's 403
        return os.strerror(errno.EACCES)
      return first[:200] or type(e).__name__
  return None


def _chain(error: BaseException):
  """`error` and the errors it was raised from, as its traceback shows them (`raise ... from None` ends it: an
  error that chose to replace its cause, a DatasetError naming an undecodable image, is not that cause)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def write_text(path, text: str):
  """Replace a small file whole: a reader never sees half of it (locally: a temporary file renamed over it;
  an object store swaps the object atomically anyway)."""
  path = epath.Path(path)
  if is_remote(path):
    path.write_text(text)
    return
  temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    temporary.write_text(text)
    os.replace(temporary, path)
  finally:
    if temporary.exists():
      temporary.unlink()


class Appender:
  """A file that grows by whole records (metrics lines, TensorBoard events), each flushed as it is written.

  Object stores cannot append to an object, so for a URL the file is rewritten whole from memory at each
  write, starting from what it already holds (a resumed run keeps its earlier records)."""

  def __init__(self, path):
    self.path = epath.Path(path)
    self._remote = is_remote(self.path)
    self._content = (self.path.read_bytes() if self.path.exists() else b"") if self._remote else None

  def append(self, data: bytes):
    if self._remote:
      self._content += data
      self.path.write_bytes(self._content)
    else:
      with open(self.path, "ab") as f:
        f.write(data)


def logged(path, run_with_log):
  """run_with_log(file) with its output appended to `path`; in a bucket, the log is written locally while the run
  lasts (objects cannot be appended to) and added to the object once it ends."""
  if not is_remote(path):
    with open(path, "a") as log:
      return run_with_log(log)
  with tempfile.TemporaryFile("w+") as log:
    try:
      return run_with_log(log)
    finally:
      log.seek(0)
      Appender(path).append(log.read().encode())


def _process_start(pid: int) -> float | None:
  try:
    return psutil.Process(pid).create_time()
  except psutil.Error:
    return None


def _command() -> str:
  argv = list(sys.argv)
  if argv and argv[0].endswith(".py") and "site-packages" not in argv[0]:
    module = os.path.splitext(os.path.relpath(argv[0]))[0].replace(os.sep, ".")
    argv[0:1] = ["python", "-m", module] if module.startswith("cnnjax.") else ["python", argv[0]]
  return shlex.join(argv)[:300]


@dataclasses.dataclass(frozen=True)
class Owner:
  """Who holds a workdir: what owner.json records."""

  job: str
  host: str
  pid: int
  pid_started: float  # with the pid, names one process even after the pid is reused
  started: float
  heartbeat: float
  command: str = ""
  processes: int = 1

  @classmethod
  def here(cls, processes: int = 1) -> "Owner":
    now = time.time()
    return cls(
      uuid.uuid4().hex,
      socket.gethostname(),
      os.getpid(),
      _process_start(os.getpid()) or 0.0,
      now,
      now,
      _command(),
      processes,
    )

  def describe(self, now: float | None = None) -> str:
    start = datetime.datetime.fromtimestamp(self.started).strftime("%Y-%m-%d %H:%M:%S")
    age = max(0.0, (now or time.time()) - self.heartbeat)
    job = f", {self.processes} processes" if self.processes > 1 else ""
    command = f" ({self.command})" if self.command else ""
    return f"process {self.pid} on host {self.host}{job}, started {start}{command}, last heartbeat {age:.0f} s ago"

  def gone(self, now: float | None = None) -> str | None:
    """Why this owner no longer runs, or None while it may."""
    if self.host == socket.gethostname() and _process_start(self.pid) != self.pid_started:
      return "its process no longer exists"
    age = (now or time.time()) - self.heartbeat
    return f"no heartbeat for {age:.0f} s" if age > STALE_AFTER_S else None


def _read_owner(text: str | None) -> Owner | None:
  """The owner a claim file names; None for no claim. A claim file that is not one (cut short by a crash
  mid-write) is an owner that is gone."""
  if not text:
    return None
  try:
    return Owner(**json.loads(text))
  except (ValueError, TypeError):
    return Owner("", "?", pid=0, pid_started=0.0, started=0.0, heartbeat=0.0, command="an unreadable owner.json")


class _LocalClaimFile:
  """owner.json on a local (or NFS) disk: read and conditional write under an exclusive flock."""

  def __init__(self, path: epath.Path):
    self.path = str(path)

  @contextlib.contextmanager
  def _locked(self):
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      fcntl.flock(fd, fcntl.LOCK_EX)
      try:  # the holder before us may have removed the file: then our lock is on a file nobody else sees
        if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)
    try:
      yield fd
    finally:
      os.close(fd)  # releases the lock

  def read(self) -> tuple[str | None, str | None]:
    """(text, version) of the claim; version is what a conditional write must match."""
    with self._locked() as fd:
      text = os.pread(fd, 1 << 20, 0).decode(errors="replace")
    return text or None, text

  def write(self, text: str | None, version: str | None) -> str | None:
    """Write (or, for None, remove) the claim if it is still at `version`; the new version, or None if another
    run changed it meanwhile."""
    with self._locked() as fd:
      if os.pread(fd, 1 << 20, 0).decode(errors="replace") != (version or ""):
        return None
      if text is None:
        os.unlink(self.path)
        return ""
      os.ftruncate(fd, 0)
      os.pwrite(fd, text.encode(), 0)
      os.fsync(fd)
    return text


class Claim:
  """This process's ownership of a workdir, kept alive by a heartbeat thread; see the module docstring."""

  def __init__(self, workdir, processes: int = 1):
    self.workdir = resolve(workdir)
    self.owner = Owner.here(processes)
    self.lost: str | None = None  # set by the heartbeat when another run took the workdir over
    self.took_over: str | None = None  # the gone owner this claim replaced, for the run's note
    self._file = _claim_file(self.workdir / CLAIM_FILE)
    self._version = None
    self._stop = threading.Event()
    self._thread = None

  def acquire(self):
    """Claim the workdir or raise WorkdirBusy naming its live owner."""
    if not is_remote(self.workdir):  # (on gs:// a folder needs no creating, and gcsfs would create a missing bucket)
      self.workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # a conditional write loses only to a concurrent change: read again and decide again
      text, version = self._file.read()
      current = _read_owner(text)
      if current is not None:
        why_gone = current.gone()
        if why_gone is None:
          raise WorkdirBusy(
            f"{self.workdir} is in use by another run: {current.describe()}. Wait for it to finish, stop it, or "
            f"choose another --workdir (a run that is gone leaves a claim that is taken over: at once on its own "
            f"host, after {STALE_AFTER_S:.0f} s without a heartbeat from another)."
          )
        self.took_over = f"{current.describe()}; {why_gone}"
      self._version = self._file.write(json.dumps(dataclasses.asdict(self.owner), indent=1), version)
      if self._version is not None:
        self._thread = threading.Thread(target=self._beat, name="workdir-heartbeat", daemon=True)
        self._thread.start()
        return self
    raise WorkdirBusy(f"{self.workdir}: another run keeps changing its claim ({CLAIM_FILE}); is a sweep started twice?")

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_S):
      owner = dataclasses.replace(self.owner, heartbeat=time.time())
      try:
        version = self._file.write(json.dumps(dataclasses.asdict(owner), indent=1), self._version)
        if version is not None:
          self.owner, self._version = owner, version
          continue
        other = _read_owner(self._file.read()[0])
        self.lost = f"another run took it over: {other.describe()}" if other else "its claim was removed"
        return
      except (
        OSError,
        WorkdirError,
      ) as e:  # a passing storage hiccup: try again at the next beat; a long one makes the claim stale
        print(
          f"warning: cannot refresh the claim on {self.workdir}: {storage_reason(e) or e}", file=sys.stderr, flush=True
        )

  def check(self):
    """Raise WorkdirBusy if the workdir was taken over (call before writing anything to it)."""
    if self.lost:
      raise WorkdirBusy(f"{self.workdir} is no longer this run's: {self.lost}. This run stops without writing more.")

  def release(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.lost is None and self._version is not None:
      with contextlib.suppress(OSError):
        self._file.write(None, self._version)


def _claim_file(path: epath.Path):
  return cloud.ClaimObject(path) if is_remote(path) else _LocalClaimFile(path)


@contextlib.contextmanager
def claim(workdir, processes: int = 1, lead: bool = True, announce=print):
  """Own `workdir` for the duration of the block (see Claim); `announce` gets the note of a takeover. Yields
  the claim. In a run of several `processes`, the `lead` one (process 0) claims it for all, the others yield
  None, and all of them stop if it cannot be claimed."""
  held, error = None, None
  if lead:
    try:
      with storage_errors():
        held = Claim(workdir, processes).acquire()
    except WorkdirError as e:
      error = e
  if processes > 1 and not _all_learn(error is None):
    error = error or WorkdirBusy(f"{workdir}: process 0 could not claim it (see its message)")
  if error is not None:
    raise error
  if held is not None and held.took_over:
    announce(f"note: took over {held.workdir} from a run that is gone ({held.took_over})")
  try:
    yield held
  finally:
    if held is not None:
      held.release()


def _all_learn(claimed: bool) -> bool:
  """Process 0's answer, on every process of a JAX job (imported here: a single process never needs JAX)."""
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.int32(claimed)))


def remedy(reason: str) -> str:
  """What a user does about a storage failure, by its cause."""
  if reason in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT), os.strerror(errno.EFBIG)):
    return "free some space"
  if reason in (os.strerror(errno.EACCES), os.strerror(errno.EPERM), os.strerror(errno.EROFS)):
    return "make it writable"
  return "fix that"


# where tensorstore and the OS name the file a failed write was for
_FAILED_PATH = re.compile(r'(?:local file|Failed writing:?|file) "([^"]+)"')


def advice(reason: str, directory, last_step: int | None) -> str:
  """What a user does after a write failed for `reason`, given the last intact checkpoint in `directory`."""
  if last_step is None:
    return f"No checkpoint was completed in {directory}: {remedy(reason)} and rerun the same command to start again."
  return (
    f"The last intact checkpoint is step {last_step} ({epath.Path(directory) / str(last_step)}): "
    f"{remedy(reason)} and rerun the same command to resume from it."
  )


@contextlib.contextmanager
def storage_errors(after=lambda reason: ""):
  """Storage failures inside (a full disk, no permission, a read-only file system) leave as one WorkdirError:
  the file, the cause, then `after(cause)` (what is intact, what to do); other errors pass unchanged."""
  try:
    yield
  except WorkdirError:
    raise
  except Exception as e:
    reason = storage_reason(e)
    if reason is None:
      raise
    path = next((x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename), None)
    match = path is None and _FAILED_PATH.search(str(e))
    where = path or (match.group(1) if match else "the workdir")
    raise WorkdirError(f"cannot write {where}: {reason}. {after(reason)}".strip()) from None
