"""What every training command shares: quiet logs, a persistent compilation cache, errors as one line."""
import contextlib
import os
import sys

import jax
from absl import flags, logging

from cnnjax import checkpoint, data, train

# What a user can cause (a bad config or name, a missing dataset, a diverging run, a foreign workdir):
# reported as one line and a non-zero exit, never a traceback.
USER_ERRORS = (ValueError, data.DatasetError, train.TrainingDiverged, checkpoint.CheckpointError)


def default_cache_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cnnjax", "jax")


def start():
  """Call first in a command's main: quiet absl/Orbax/grain INFO logs unless --verbosity is given, and keep
  compiled programs on disk (JAX_COMPILATION_CACHE_DIR, else a per-user cache directory) so a rerun or a
  resume of the same config skips XLA compilation."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", default_cache_dir())


@contextlib.contextmanager
def one_line_errors(config_path: str = ""):
  """USER_ERRORS inside become `error: MESSAGE` on stderr and exit status 1. With the command's --config
  path, a dataset error's offline hint names the `local` variant of that very config."""
  try:
    yield
  except USER_ERRORS as e:
    message = f"error: {e}"
    if config_path and isinstance(e, data.DatasetError):
      path, _, arg = config_path.partition(":")
      message = message.replace("configs/NAME.py:local", f"{path}:{arg},local" if arg else f"{path}:local")
    sys.exit(message)


def define_distributed_flags():
  """The flags of a run over several processes, named as jax.distributed.initialize names them."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a run over several processes (GPU "
                      "clusters, processes on one machine); 'auto': JAX reads it and the two below from a TPU VM "
                      "slice, SLURM or Open MPI.")  # fmt: skip
  flags.DEFINE_integer("num_processes", None, "How many processes the run spans (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1 (with --coordinator_address).")
  flags.DEFINE_integer("distributed_timeout", 120, "Seconds a process waits for the others to start, and for a "
                       "silent one before it stops the run instead of waiting forever.", lower_bound=5)  # fmt: skip


def start_distributed():
  """jax.distributed.initialize when --coordinator_address is given. Call before anything touches a device."""
  address, count, index = (flags.FLAGS[n].value for n in ("coordinator_address", "num_processes", "process_id"))
  if address is None:
    if count is not None or index is not None:
      sys.exit("error: --num_processes and --process_id need --coordinator_address")
    return
  if address != "auto" and (count is None or index is None):
    sys.exit("error: --coordinator_address=HOST:PORT needs --num_processes and --process_id (or write 'auto')")
  # CPU devices of several processes need a collectives library to reduce across them (GPUs and TPUs have theirs)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  timeout = flags.FLAGS.distributed_timeout
  given = {} if address == "auto" else {"coordinator_address": address, "num_processes": count, "process_id": index}
  jax.distributed.initialize(**given, initialization_timeout=timeout, heartbeat_timeout_seconds=timeout)


def define_integer_list(name: str, default: str, help_text: str):
  """A comma-separated list flag of non-negative integers (--seeds=0,1,2), refused at parse time otherwise."""
  flags.DEFINE_list(name, default, help_text)
  flags.register_validator(name, lambda values: all(v.isdigit() for v in values), f"--{name} takes comma-separated integers, e.g. --{name}=0,1,2")
