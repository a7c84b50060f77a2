"""Cloud Storage (gs://BUCKET/...) workdirs and data directories, as TPU VM slices use them.

Which library carries what (install with `pip install -e '.[gcs]'`):
- checkpoint arrays: Orbax through tensorstore's own `gcs` driver (no extra package);
- every other file of a workdir (config.json, metrics.jsonl, summary.json, curves.png, TensorBoard events, a
  sweep's summaries, an experiment's tables): `etils.epath`, which reads and writes gs:// through gcsfs;
- the workdir's claim (owner.json, see cnnjax.workdir): `google-cloud-storage`, for its conditional writes
  (`if_generation_match`). GCS has no locks, but it applies a write conditioned on the object's generation
  atomically, so "replace the claim only if it is still the one I read" is one request, and of two runs taking
  over a stale claim exactly one wins. A lease object with a heartbeat alone would not settle that race.
- tfds data directories: tfds finds and describes the dataset on gs:// (epath), but array_record, the format
  training reads, only reads local files, so a gs:// data_dir's dataset is copied once to a local cache
  (local_data_dir) and read from there. That suits the datasets a TPU VM's disk holds (CIFAR, Imagenette); for
  ImageNet mount the bucket with gcsfuse and give the mount as a local data_dir.

Credentials are the environment's: a TPU or GCE VM's service account, or `gcloud auth application-default login`
on a laptop. STORAGE_EMULATOR_HOST (the Google client and gcsfs) and TENSORSTORE_GCS_HTTP_URL (tensorstore) point
everything at another server, as the tests do.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import shutil

from cnnjax.errors import WorkdirError

CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cnnjax", "gcs")
INSTALL = "pip install -e '.[gcs]'"


def configure_environment():
  """Settings the clients read when first imported: call before anything touches gs://.

  gcsfs's experimental support of zonal and hierarchical-namespace buckets asks every bucket for its type over
  gRPC first; a standard bucket (what a workdir is) does not need it, and a server without that gRPC API (the
  emulator) makes each call wait about a minute for it. Set GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=true to have it."""
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def split(url) -> tuple[str, str]:
  """('BUCKET', 'path/in/bucket') of gs://BUCKET/path/in/bucket."""
  bucket, _, name = str(url).removeprefix("gs://").partition("/")
  return bucket, name.strip("/")


def _storage():
  try:
    from google.cloud import storage
  except ImportError:
    raise WorkdirError(f"gs:// paths need the Cloud Storage clients: {INSTALL}") from None
  return storage


_client = None


def client():
  """One google-cloud-storage client per process, with the environment's credentials."""
  global _client
  if _client is None:
    # google-auth logs each place it looked for credentials in vain; a failure is reported once, by reason()
    quiet = logging.getLogger("google.auth._default")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
      _client = _storage().Client()
    finally:
      quiet.setLevel(level)
  return _client


def reason(error: BaseException) -> str | None:
  """What a failed Cloud Storage call means, in a few words; None if `error` is not one."""
  from google.api_core import exceptions as api
  from google.auth import exceptions as auth

  if isinstance(error, auth.DefaultCredentialsError):
    return (
      "no Google Cloud credentials (on a laptop run `gcloud auth application-default login`; a TPU VM uses its "
      "service account)"
    )
  if isinstance(error, auth.GoogleAuthError):
    return f"the credentials were refused ({str(error).splitlines()[0][:160]})"
  if isinstance(error, api.Forbidden | api.Unauthorized):
    return f"{os.strerror(errno.EACCES)} (the account needs roles/storage.objectAdmin on the bucket)"
  if isinstance(error, api.NotFound):  # a write's 404: objects need no parents, so it is the bucket that is missing
    return "no such bucket (make one: gcloud storage buckets create gs://NAME --location=REGION)"
  if isinstance(error, api.GoogleAPICallError):
    return f"Cloud Storage answered {error.code}: {error.message.splitlines()[0][:160]}"
  return None


@contextlib.contextmanager
def failures(path: str, verb: str):
  """A failure to reach a bucket (none, no permission, no credentials) as one WorkdirError naming `path`."""
  try:
    yield
  except Exception as e:
    why = reason(e)
    if why is None:
      raise
    raise WorkdirError(f"cannot {verb} {path}: {why}.") from None


def check_readable(url: str):
  """WorkdirError in one line unless gs:// `url` can be listed: a command that only reads (a sweep's summary, its
  commands) finds out about missing credentials or a missing bucket at once, not after gcsfs's retries."""
  bucket, name = split(url)
  with failures(url, "read"):
    next(iter(client().bucket(bucket).list_blobs(prefix=name, max_results=1)), None)


class ClaimObject:
  """owner.json in a bucket, read and replaced with generation preconditions (see the module docstring); the
  same interface as the local claim file of cnnjax.workdir. A version is the object's generation."""

  def __init__(self, path):
    self.path = str(path)
    self._bucket, self._name = split(path)

  def read(self) -> tuple[str | None, str | None]:
    """(text, generation) of the claim, (None, None) if there is none."""
    from google.api_core import exceptions as api

    with failures(self.path, "read"):
      blob = client().bucket(self._bucket).blob(self._name)
      try:
        blob.reload()
        text = blob.download_as_bytes(if_generation_match=blob.generation).decode(errors="replace")
      except (api.NotFound, api.PreconditionFailed):  # none, or replaced between the two calls: none to match
        return None, None
    return text, str(blob.generation)

  def write(self, text: str | None, version: str | None) -> str | None:
    """Write (or, for None, remove) the claim if it is still at `version`; the new version, or None if another
    run changed it meanwhile."""
    from google.api_core import exceptions as api

    with failures(self.path, "write"):
      blob, generation = client().bucket(self._bucket).blob(self._name), int(version) if version else 0
      try:
        if text is None:
          blob.delete(if_generation_match=generation)
          return ""
        blob.upload_from_string(text, content_type="application/json", if_generation_match=generation)
      except api.PreconditionFailed:
        return None
    return str(blob.generation)


def _files():
  import gcsfs  # the one epath uses for gs://

  return gcsfs.GCSFileSystem()


def _listing(url: str) -> dict[str, int]:
  """{relative name: size} of the objects under `url`."""
  prefix = url.removeprefix("gs://").rstrip("/") + "/"
  return {name.removeprefix(prefix): info["size"] for name, info in _files().find(url, detail=True).items()}


def local_data_dir(url: str, dataset_dir: str) -> str:
  """A local data directory holding the same dataset as the gs:// data directory `url`.

  `dataset_dir` (gs://.../NAME/VERSION, as tfds resolved it) is copied once to CACHE/BUCKET/... (files of the
  same names and sizes are kept); the copy is made in a temporary folder and renamed into place under a lock,
  so runs started together on one host copy it once and never read half a copy."""
  bucket, prefix = split(url)
  local_root = os.path.join(CACHE, bucket, prefix)
  target = os.path.join(CACHE, *split(dataset_dir))
  listing = _listing(dataset_dir)
  if not listing:
    return local_root
  manifest = os.path.join(target, ".cnnjax-copied.json")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with open(target + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    with contextlib.suppress(OSError, ValueError):
      if json.loads(pathlib.Path(manifest).read_text()) == listing:
        return local_root
    needed, free = sum(listing.values()), shutil.disk_usage(os.path.dirname(target)).free
    if needed > free:
      raise WorkdirError(
        f"{dataset_dir} ({needed / 1e9:.1f} GB) does not fit in {CACHE} ({free / 1e9:.1f} GB free): mount the bucket "
        f"with gcsfuse and give the mount as a local data_dir, or set XDG_CACHE_HOME to a bigger disk."
      )
    print(
      f"copying {dataset_dir} ({needed / 1e6:.0f} MB) to {target} (array_record reads local files only)", flush=True
    )
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    for name in listing:
      os.makedirs(os.path.dirname(os.path.join(partial, name)), exist_ok=True)
      _files().get(f"{dataset_dir}/{name}", os.path.join(partial, name))
    with open(os.path.join(partial, os.path.basename(manifest)), "w") as f:
      json.dump(listing, f)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
  return local_root
