"""Shared fixtures. Tests run on the CPU with 8 simulated devices, so pmapped steps really split batches."""

import atexit
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile

# before anything imports jax: 8 devices, and one persistent compilation cache for the session, shared by the
# xdist workers (they inherit the controller's environment) and the commands they start, so a program several
# tests build compiles once. The tests' programs are tiny and run a few steps, so compiling dominates, while what
# they check (shapes, values, bit-identical reruns of the same program) does not depend on how the compiled code is
# optimised: for the suite (and the commands it starts) LLVM's optimisation is off and fused loops are emitted the
# simpler way (XLA's CPU fusion emitters off), which compiles several times faster and runs as fast.
# XLA aborts a process whose simulated devices have waited 40 s for each other in a collective (its deadlock
# guard), which eight simulated devices on a loaded 2-core machine can exceed. Ten minutes lets a late device
# arrive; a real deadlock still ends the test, after XLA's "may be stuck" warnings at 20 s, which reach the log
# (--capture=sys in pyproject.toml).
SUITE_XLA_FLAGS = (
  "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
  "--xla_cpu_collective_call_terminate_timeout_seconds=600"
)
if "PYTEST_XDIST_WORKER" not in os.environ:  # the controlling process, or a session without workers
  os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8 {SUITE_XLA_FLAGS}"
  )
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="cnnjax-tests-xla-cache-")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the tests' programs are small: keep them all
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import numpy as np
import pytest
from absl import flags
from hypothesis import settings
from PIL import Image

# No per-example deadline for property tests: many trace and compile a JAX program, whose first example can take
# ten times the others on a loaded 2-core machine, and hypothesis would call that flaky. A slow test shows in
# --durations instead; each test sets how many examples it draws.
settings.register_profile("cnnjax", deadline=None)
settings.load_profile("cnnjax")

# Outside an absl app nothing parses flags; grain's worker processes read theirs, so take the defaults.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A tfds data directory for the session with `digits` prepared once, here: a command's output does not depend on
  whether an earlier test prepared it (tfds announces a preparation on stdout)."""
  from cnnjax import data

  path = str(tmp_path_factory.mktemp("tensorflow_datasets"))
  data.load("digits", path)
  return path


@pytest.fixture(scope="session")
def local_cifar10(tmp_path_factory):
  """A 24/10-example dataset in tfds's real cifar10 format (array_record, PNG-encoded images), written here.

  tfds cannot download CIFAR-10 on this machine, and its Image feature needs TensorFlow to encode arrays,
  so the real cifar10 builder is subclassed to generate a few PIL images instead of reading the download.
  """
  from tensorflow_datasets.image_classification.cifar import Cifar10

  class LocalCifar10(Cifar10, skip_registration=True):
    name = "cifar10"

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples("train_", 24), "test": self._generate_examples("test_", 10)}

    def _generate_examples(self, prefix, count):
      rng = np.random.default_rng(len(prefix))
      for i in range(count):
        image = Image.fromarray(np.full((32, 32, 3), 10 * i, np.uint8) + rng.integers(0, 5, (32, 32, 3), np.uint8))
        yield i, {"id": f"{prefix}{i:05d}", "image": image, "label": i % 10}

  data_dir = str(tmp_path_factory.mktemp("cifar10_tfds"))
  LocalCifar10(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


@pytest.fixture(scope="session")
def small_tfds(tmp_path_factory):
  """mnist, cifar100, imagenette and imagenet2012 in tfds's real formats (array_record; PNG, PNG and JPEG images), a few
  examples each, written here as `local_cifar10` writes cifar10: each real builder, fed PIL images."""
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification.cifar import Cifar100
  from tensorflow_datasets.image_classification.mnist import MNIST

  def local(builder, splits, shape, classes):
    class Local(builder, skip_registration=True):
      name = builder.name

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, count) for split, count in splits.items()}

      def _generate_examples(self, split, count):
        rng = np.random.default_rng(len(split))
        for i in range(count):
          size = shape(rng)
          image = Image.fromarray(rng.integers(0, 256, size, np.uint8).squeeze())
          example = {"image": image, "label": i % classes}
          if builder is Cifar100:
            example |= {"id": f"{split}_{i:05d}", "coarse_label": i % 20}
          if builder is imagenet2012:
            example |= {"file_name": f"{split}_{i:05d}.JPEG"}
          yield i, example

    return Local

  data_dir = str(tmp_path_factory.mktemp("small_tfds"))
  imagenette, imagenet2012 = tfds.builder_cls("imagenette"), tfds.builder_cls("imagenet2012")
  for builder, splits, shape, classes in (
    (MNIST, {"train": 12, "test": 6}, lambda rng: (28, 28, 1), 10),
    (Cifar100, {"train": 12, "test": 6}, lambda rng: (32, 32, 3), 100),
    (
      imagenette,
      {"train": 12, "validation": 6},
      lambda rng: (int(rng.integers(60, 90)), int(rng.integers(60, 90)), 3),
      10,
    ),
    (
      imagenet2012,
      {"train": 4, "validation": 6},
      lambda rng: (int(rng.integers(230, 300)), int(rng.integers(230, 300)), 3),
      1000,
    ),
  ):
    local(builder, splits, shape, classes)(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def write_images(root, layout):
  """Write PNGs: layout maps 'split/class' (or 'class') to a number of images; pixel value = running count."""
  count = 0
  for folder, n in layout.items():
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
      Image.fromarray(np.full((20 + i, 24, 3), count % 256, np.uint8)).save(path / f"{i}.png")
      count += 1
  return root


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@dataclasses.dataclass
class Gcs:
  """The session's local Cloud Storage server (tests/gcs_server.py): its URL and a google-cloud-storage client."""

  url: str
  client: object

  def bucket(self, name: str) -> str:
    """Create bucket `name` (if new); returns gs://name."""
    if self.client.lookup_bucket(name) is None:
      self.client.create_bucket(name)
    return f"gs://{name}"

  def objects(self, url: str) -> set[str]:
    """The names of the objects under gs://BUCKET/PREFIX, relative to it, listed by the client (not by cnnjax)."""
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    return {b.name.removeprefix(prefix.rstrip("/") + "/") for b in self.client.list_blobs(bucket, prefix=prefix)}


@pytest.fixture(scope="session")
def gcs():
  """A real GCS JSON API server on 127.0.0.1 (gcp-storage-emulator, in memory) for the session, and the
  environment every client (google-cloud-storage, gcsfs, tensorstore) and every command started by a test reads
  to use it with anonymous credentials; the environment is restored afterwards."""
  port = free_port()
  server = subprocess.Popen(
    [sys.executable, os.path.join(os.path.dirname(__file__), "gcs_server.py"), str(port)],
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  assert server.stdout.readline().strip() == "ready"
  url = f"http://127.0.0.1:{port}"
  environment = {
    "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage and gcsfs
    "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (Orbax's checkpoint arrays)
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anonymous",  # tensorstore: no credentials to look for
    "NO_GCE_CHECK": "true",  # gcsfs: do not wait for a VM's metadata server
    "GCE_METADATA_HOST": "127.0.0.1:9",
    "GCE_METADATA_ROOT": "127.0.0.1:9",  # google-auth: none answers there
  }
  saved = {k: os.environ.get(k) for k in environment}
  os.environ.update(environment)
  from google.cloud import storage

  try:
    yield Gcs(url, storage.Client())
  finally:
    server.kill()
    server.wait()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value


@pytest.fixture
def drawn(monkeypatch):
  """The axes of every figure cnnjax.metrics.figure draws in the test (how every command draws), laid out as
  saved: what a figure shows can be checked without reading pixels."""
  import contextlib

  from cnnjax import metrics

  kept, real = [], metrics.figure

  @contextlib.contextmanager
  def keeping_axes(*args, **kwargs):
    with real(*args, **kwargs) as axes:
      kept.append(axes)
      yield axes

  monkeypatch.setattr(metrics, "figure", keeping_axes)
  return kept
