"""A machine's accelerators shared out among a sweep's runs: each run its own GPUs, TPU chips or CPU cores.

Found without importing JAX: a driver process that opened the TPU would hold every chip itself. GPUs are counted by
`nvidia-smi`, TPU chips by their device files (/dev/accel*, or /dev/vfio/N on v5e and v6e) and the VM's
TPU_ACCELERATOR_TYPE, CPU cores by this process's affinity; `--accelerators=gpu:8|tpu:v4-8|cpu:16` says it
instead. `split` cuts them into equal slots, and `environment(platform, ids, port)` gives the variables a run
needs to see only its own: CUDA_VISIBLE_DEVICES for GPUs; for TPU chips the libtpu variables that make one process
of a few chips (its chips, their bounds, a port of its own, and JAX_PLATFORMS=tpu so that a run that cannot open
them fails instead of training on the CPU). CPU cores are given by affinity (`pin`), not by a variable.
"""

import dataclasses
import glob
import os
import re
import shutil
import subprocess

# Chips on one host of each TPU type the sweep knows (v2, v3, v4, v5p name TensorCores, two per chip; v5e, v6e chips).
TPU_CHIPS = {
  "v2-8": 4,
  "v3-8": 4,
  "v4-8": 4,
  "v5p-8": 4,
  "v5e-1": 1,
  "v5e-4": 4,
  "v5e-8": 8,
  "v6e-1": 1,
  "v6e-4": 4,
  "v6e-8": 8,
}
TPU_ALIASES = {"v5litepod": "v5e"}
# libtpu's process bounds for a process of K chips on one host (chips 0..K-1 of a 2x2 or 2x4 host)
TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}
FIRST_PORT = 8476  # libtpu's own port, then one more per slot


@dataclasses.dataclass(frozen=True)
class Accelerators:
  platform: str  # gpu | tpu | cpu
  count: int  # GPUs, TPU chips or CPU cores
  found: str  # what was found, in words: "8 GPUs", "TPU v4-8 (4 chips)", "2 CPU cores"
  ids: tuple[int, ...] = ()  # their numbers, where they are not 0 .. count - 1 (the CPU cores this process may use)


@dataclasses.dataclass(frozen=True)
class Slot:
  platform: str
  ids: tuple[int, ...]  # GPU indices, TPU chip indices or CPU core numbers
  port: int

  def __str__(self) -> str:
    return f"{self.platform} {','.join(map(str, self.ids))}"


def parse(text: str) -> Accelerators:
  """`gpu:8`, `tpu:v4-8` or `cpu:16`; ValueError naming the forms otherwise."""
  platform, _, size = text.partition(":")
  if platform == "tpu":
    kind = TPU_ALIASES.get(size.split("-")[0], size.split("-")[0]) + "-" + size.partition("-")[2]
    if kind not in TPU_CHIPS:
      raise ValueError(f"unknown TPU type {size!r} in --accelerators={text}; known: {', '.join(TPU_CHIPS)}")
    return Accelerators("tpu", TPU_CHIPS[kind], f"TPU {size} ({TPU_CHIPS[kind]} chips)")
  if platform in ("gpu", "cpu") and size.isdigit() and int(size) > 0:
    noun = "GPU" if platform == "gpu" else "CPU core"
    return Accelerators(platform, int(size), f"{size} {noun}{'s' if int(size) > 1 else ''}")
  raise ValueError(f"--accelerators={text}: write gpu:COUNT, tpu:TYPE (v4-8, v5e-8, ...) or cpu:COUNT")


def detect() -> Accelerators:
  """This machine's GPUs, else its TPU chips, else its CPU cores."""
  if shutil.which("nvidia-smi"):
    listed = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=60).stdout
    if count := sum(line.startswith("GPU ") for line in listed.splitlines()):
      return parse(f"gpu:{count}")
  chips = glob.glob("/dev/accel[0-9]*") or [p for p in glob.glob("/dev/vfio/*") if re.fullmatch(r".*/\d+", p)]
  if chips:
    kind = os.environ.get("TPU_ACCELERATOR_TYPE", "")
    if kind:
      return parse(f"tpu:{kind}")
    return Accelerators("tpu", len(chips), f"{len(chips)} TPU chips")
  cores = tuple(sorted(os.sched_getaffinity(0)))
  return dataclasses.replace(parse(f"cpu:{len(cores)}"), ids=cores)


def split(accelerators: Accelerators, parallel: int = 0, per_run: int = 0) -> list[Slot]:
  """`parallel` equal slots (or slots of `per_run` each); ValueError naming what was found if they do not divide."""
  per_run = per_run or (accelerators.count // parallel if parallel and accelerators.count % parallel == 0 else 0)
  if not per_run or accelerators.count % per_run:
    asked = f"--devices_per_run={per_run}" if per_run else f"--parallel={parallel}"
    raise ValueError(f"{asked} does not split {accelerators.found} into equal slots")
  if accelerators.platform == "tpu" and per_run not in TPU_BOUNDS:
    raise ValueError(
      f"a run of {per_run} TPU chips has no process bounds; give it 1, 2, 4 or 8 of {accelerators.found}"
    )
  ids = accelerators.ids or tuple(range(accelerators.count))
  return [
    Slot(accelerators.platform, ids[first : first + per_run], FIRST_PORT + i)
    for i, first in enumerate(range(0, accelerators.count, per_run))
  ]


def environment(platform: str, ids: tuple[int, ...], port: int) -> dict[str, str]:
  """The variables that give a run `ids` of the machine's `platform` devices and nothing else."""
  listed = ",".join(map(str, ids))
  if platform == "gpu":
    return {"CUDA_VISIBLE_DEVICES": listed}
  if platform == "tpu":
    return {
      "TPU_VISIBLE_CHIPS": listed,
      "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_BOUNDS[len(ids)],
      "TPU_PROCESS_BOUNDS": "1,1,1",
      "TPU_PROCESS_PORT": str(port),
      "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
      "CLOUD_TPU_TASK_ID": "0",
      "ALLOW_MULTIPLE_LIBTPU_LOAD": "true",
      "JAX_PLATFORMS": "tpu",
    }
  return {}  # CPU cores: by affinity (pin)


def pin(slot: Slot):
  """A function for Popen's preexec_fn that keeps the child on the slot's CPU cores (those of them this process
  may use; all of those where none is); None for other slots."""
  if slot.platform != "cpu":
    return None
  return lambda: os.sched_setaffinity(0, (set(slot.ids) & os.sched_getaffinity(0)) or os.sched_getaffinity(0))
