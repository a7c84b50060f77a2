"""What every training command shares: quiet logs, a persistent compilation cache, errors as one line."""

import contextlib
import logging as stdlib_logging
import os
import sys

from absl import app, flags, logging

from cnnjax import errors, workdir
from cnnjax.config import parse_flags

# What a user can cause (a bad config or name, a missing dataset, a diverging run, a foreign, busy or full
# workdir): reported as one line and a non-zero exit, never a traceback.
USER_ERRORS = (
  ValueError,
  errors.TrainingDiverged,
  errors.CheckpointError,
  errors.WorkdirError,
)  # DatasetError: a ValueError


def default_cache_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cnnjax", "jax")


def start(compiles: bool = True):
  """Call first in a command's main: quiet absl/Orbax/grain INFO logs unless --verbosity is given, and keep
  compiled programs on disk (JAX_COMPILATION_CACHE_DIR, else a per-user cache directory) so a rerun or a
  resume of the same config skips XLA compilation. A command that runs no JAX (the sweep's driver, which must
  leave a TPU to its runs) says `compiles=False`: JAX is then not even imported."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  _report_failed_saves_once()
  if not compiles:
    return
  import jax  # (here: see above)

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", default_cache_dir())
  # every program, not only those compiling for a second or more (JAX's default): a small net's programs each
  # compile in less, and together they are most of its start-up
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _report_failed_saves_once():
  """A checkpoint save that fails (a full disk) stops the command with one line (cnnjax.checkpoint). Orbax's
  threads also log that failure with tracebacks, asyncio logs the tasks Orbax abandoned ('Task exception was
  never retrieved'), and tensorstore, finishing writes after the event loop of the abandoned save closed, raises
  'Event loop is closed' where nothing can catch it: all of these repeat the one line, so they are dropped."""

  def not_a_failed_save(record) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return error is None or workdir.storage_reason(error) is None

  for name in ("absl", "asyncio"):
    stdlib_logging.getLogger(name).addFilter(not_a_failed_save)
  default_hook = sys.unraisablehook

  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
      default_hook(unraisable)

  sys.unraisablehook = hook


@contextlib.contextmanager
def one_line_errors(config_path: str = ""):
  """USER_ERRORS inside become `error: MESSAGE` on stderr and exit status 1; a run stopped by a signal says
  where its checkpoint is and exits with the signal's status; Ctrl-C anywhere else stops at once with one
  line (130). With the command's --config path, a dataset error's offline hint names the `local` variant of
  that very config."""
  try:
    yield
  except errors.Stopped as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except USER_ERRORS as e:
    message = f"error: {e}"
    if config_path and isinstance(e, errors.DatasetError):
      path, _, arg = config_path.partition(":")
      message = message.replace("configs/NAME.py:local", f"{path}:{arg},local" if arg else f"{path}:local")
    sys.exit(message)
  except RuntimeError as e:  # JAX cannot open the accelerator it was told to use (JAX_PLATFORMS=tpu, a sweep's slot)
    if not str(e).startswith("Unable to initialize backend"):
      raise
    sys.exit(f"error: {str(e).splitlines()[0]}")
  except KeyboardInterrupt:
    stop_at_once("stopped by Ctrl-C")


def stop_at_once(message: str, status: int = 130):
  """Print `message` and end the process now: worker threads (data loading, checkpoint writing) are not waited
  for, which is what a user who pressed Ctrl-C asks for; whatever was saved completely stays usable."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(status)


def run(main, config_flag: str = "config"):
  """`app.run(main)` for a cnnjax command: bad flags, user errors and Ctrl-C end in one line (one_line_errors;
  a dataset error's hint names the command's own --config, when it has one)."""

  def guarded(argv):
    config_path = (
      flags.FLAGS[config_flag].config_filename
      if config_flag in flags.FLAGS and flags.FLAGS[config_flag].present
      else ""
    )
    with one_line_errors(config_path):
      return main(argv)

  _show_shared_flags()
  app.run(guarded, flags_parser=parse_flags)


def _show_shared_flags():
  """Make the flags a command defines through cnnjax's shared helpers (--seeds, --workdir of the experiments, the
  distributed flags) key flags of the command, so its --help lists them beside its own (absl lists only the flags
  defined in the main module)."""
  main_module = sys.argv[0]
  for module, defined in flags.FLAGS.flags_by_module_dict().items():
    if module != main_module and module.startswith("cnnjax."):
      for flag in defined:
        flags.FLAGS.register_key_flag_for_module(main_module, flag)


def define_distributed_flags():
  """The flags of a run over several processes, named as jax.distributed.initialize names them."""
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for a run over several processes (GPU "
    "clusters, processes on one machine); 'auto': JAX reads it and the two below from a TPU VM "
    "slice, SLURM or Open MPI.",
  )
  flags.DEFINE_integer("num_processes", None, "How many processes the run spans (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1 (with --coordinator_address).")
  flags.DEFINE_integer(
    "distributed_timeout",
    120,
    "Seconds a process waits for the others to start, and for a "
    "silent one before it stops the run instead of waiting forever.",
    lower_bound=5,
  )


def start_distributed():
  """jax.distributed.initialize when --coordinator_address is given. Call before anything touches a device."""
  import jax  # (here: a command that never starts one need not import it)

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
  flags.register_validator(
    name,
    lambda values: all(v.isdigit() for v in values),
    f"--{name} takes comma-separated integers, e.g. --{name}=0,1,2",
  )
