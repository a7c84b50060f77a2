"""Orbax checkpoints of a run: the train state as one pytree, and the data iterator's position beside it.

    workdir/config.json            the config that made the checkpoints (a different model is refused)
    workdir/checkpoints/<step>/    state (an Orbax PyTree of jax.Arrays) + data (the grain iterator state, JSON)

Saves are asynchronous (training goes on while Orbax writes) and atomic: a step directory appears only when
complete, so a save cut short (a full disk, a killed process) leaves a temporary folder that is never taken for
a checkpoint and is removed when the workdir is next opened. A save that fails stops the run with one line
naming the cause and the last intact checkpoint. Restoring walks back from the newest step: a corrupt one is
reported and the previous used.
"""

import json
import logging
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnnjax import models
from cnnjax import workdir as workdir_lib
from cnnjax.config import NETWORK_FIELDS
from cnnjax.errors import CheckpointError

# The fields that fix the shapes of the parameters: a workdir is only resumed by the same model.
IDENTITY = ("model", "model_options", "dataset", "classes", "image_size", "channels", "trainable")

# The fields that fix what a step is (how many examples, in which order): a resume must keep them, or the saved
# step count and data position would silently mean something else.
STEP_MEANING = ("batch_size", "seed", "shots")


def _array_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
  """Orbax's handlers, but jax.Arrays saved by one replica. By default Orbax splits the saving of a replicated
  array across its devices ("replica-parallel"), compiling a slicing program per array and device, which makes the
  first save of a model on 8 devices tens of times slower."""
  th = ocp.type_handlers
  return th.create_type_handler_registry(
    (int, th.ScalarHandler()),
    (float, th.ScalarHandler()),
    (np.number, th.ScalarHandler()),
    (np.ndarray, th.NumpyHandler()),
    (jax.Array, th.ArrayHandler(use_replica_parallel=False)),
  )


class Checkpointer:
  def __init__(self, workdir: str, config, keep: int = 3, create: bool = True):
    self.workdir = workdir_lib.resolve(workdir)
    self.directory = self.workdir / "checkpoints"
    config_file = self.workdir / "config.json"
    ours = json.loads(config.to_json_best_effort())
    if config_file.exists():
      theirs = json.loads(config_file.read_text())
      if self.directory.exists() and any(self.directory.iterdir()):
        _refuse_other_runs(self.workdir, theirs, ours, resuming=create)
    elif not create:
      raise CheckpointError(f"{self.workdir} has no config.json: it is not a cnnjax workdir")
    if create and jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      workdir_lib.write_text(config_file, json.dumps(ours, indent=1, sort_keys=True))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, enable_async_checkpointing=True, cleanup_tmp_directories=create
    )
    handlers = {
      "state": ocp.PyTreeCheckpointHandler(type_handler_registry=_array_handlers()),
      "data": ocp.JsonCheckpointHandler(),
    }
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._saving = None  # the step whose asynchronous save may still be running

  def last_intact(self) -> int | None:
    """The step a rerun would resume from: the newest completed save (not one that may still be writing)."""
    return max((s for s in self.manager.all_steps() if s != self._saving), default=None)

  def advice(self, reason: str) -> str:
    """After a failed write: which checkpoint is intact and what to do, in words."""
    return workdir_lib.advice(reason, self.directory, self.last_intact())

  def _failed(self, error: Exception, step: int) -> Exception:
    """A failed save as one WorkdirError (cause, what is intact, what to do); other errors are left as they are."""
    reason = workdir_lib.storage_reason(error)
    if reason is None:
      return error
    self._saving = step
    return workdir_lib.WorkdirError(
      f"cannot save the checkpoint of step {step} in {self.directory}: {reason}. " + self.advice(reason)
    )

  def save(self, step: int, state, data_state: dict):
    """Every process calls this with the same state: Orbax writes it once, collectively, and the data state of
    process 0 (all hosts read equal-length shards, so their iterator positions are equal). A failure of this
    save or of the previous (still asynchronous) one raises WorkdirError."""
    if jax.process_count() > 1:  # each host holds a replica on its own devices: one global array for Orbax
      state = jax.tree.map(lambda a: ocp.utils.fully_replicated_host_local_array_to_global_array(a), state)
    # force: the loop decides when to save; Orbax alone would skip a save while the previous one is writing
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state))
    try:
      self.manager.save(step, args=args, force=True)
    except Exception as e:  # Orbax reports the previous save's failure here too
      raise self._failed(e, self._saving or step) from None
    self._saving = step

  def restore_latest(self, init_fn: Callable, required: bool = False):
    """(state, data iterator state) from the newest readable checkpoint, else (init_fn(), None).

    The target's shapes come from jax.eval_shape(init_fn): nothing is initialised to be overwritten.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      if required:
        raise CheckpointError(f"no checkpoint in {self.directory}")
      return init_fn(), None
    abstract = jax.eval_shape(init_fn)
    if jax.process_count() > 1:  # restored replicated over all hosts' devices; each keeps its own replica below
      everywhere = NamedSharding(Mesh(np.array(jax.devices()), ("all",)), PartitionSpec())
      abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=everywhere), abstract)
    state_args = ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
    errors = []
    for step in steps:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(state=state_args, data=ocp.args.JsonRestore()))
      except Exception as e:  # a truncated or corrupt step: report it and fall back to the one before
        errors.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        logging.getLogger(__name__).warning(
          "checkpoint %s/%d is unreadable (%s); trying the previous one", self.directory, step, e
        )
        continue
      if errors:
        print(f"warning: skipped unreadable checkpoint(s) {'; '.join(errors)}; resumed from step {step}", flush=True)
      state = restored.state
      if jax.process_count() > 1:
        state = jax.tree.map(lambda a: a.addressable_data(0), state)
      return state, restored.data
    raise CheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(errors))

  def wait(self):
    """Block until the last save is on disk; WorkdirError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._failed(e, self._saving) from None
    self._saving = None

  def close(self):
    self.manager.close()


def latest_state(workdir: str, config, init_fn: Callable):
  """The state in the latest readable checkpoint of `workdir` (shapes from `init_fn`); CheckpointError if there
  is none."""
  ckpt = Checkpointer(workdir, config, keep=config.keep_checkpoints, create=False)
  try:
    return ckpt.restore_latest(init_fn, required=True)[0]
  finally:
    ckpt.close()


def is_workdir(path: str) -> bool:
  """Whether `path` (a local or gs:// folder) is a cnnjax workdir: it has the config.json of its run."""
  return (workdir_lib.resolve(path) / "config.json").exists()


def latest_variables(workdir: str) -> dict:
  """{'params', 'batch_stats'} of the newest checkpoint in `workdir`, read without knowing the run's optimizer
  (a fine-tuning's init_from)."""
  directory = workdir_lib.resolve(workdir) / "checkpoints"
  steps = (
    sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True) if directory.exists() else []
  )
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory} to start from")
  state = read_state(directory / str(steps[0]) / "state")
  return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


def read_state(path) -> dict:
  """The saved train state at `path` (a step's state folder) as arrays, whatever its optimizer, read by a
  checkpointer that is closed afterwards, as Orbax asks of every one."""
  with ocp.StandardCheckpointer() as reader:
    return reader.restore(path)


def _all_options(config_dict: dict) -> dict:
  """The model's options as the model sees them: an option at its default is the same whether or not the config
  listed it (config files list them all since they return through config.finish; older workdirs did not)."""
  options = dict(config_dict.get("model_options") or {})
  try:
    every = models.defaults(config_dict.get("model", ""))
  except ValueError:  # a model this version does not know: compare what was written
    return options
  return {**every, **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}}


def _refuse_other_runs(workdir, theirs: dict, ours: dict, resuming: bool = True):
  """CheckpointError unless a config may resume the checkpoints another made (same model and same steps) or, when
  not `resuming`, read them (the same network)."""
  theirs, ours = (dict(c, model_options=_all_options(c)) for c in (theirs, ours))
  # a workdir whose config.json predates a field ran with its default
  for field, default in (("trainable", "all"), ("classes", []), ("shots", 0)):
    theirs.setdefault(field, default)
  differ = {k: (theirs.get(k), ours.get(k)) for k in IDENTITY if theirs.get(k) != ours.get(k)}
  if not resuming:
    differ = {k: v for k, v in differ.items() if k in NETWORK_FIELDS}
  if differ:
    changes = ", ".join(f"{k}: {a!r}, not {b!r}" for k, (a, b) in differ.items())
    raise CheckpointError(
      f"{workdir} holds checkpoints of another model ({changes}); choose another --workdir or remove that one."
    )
  differ = {k: (theirs.get(k), ours.get(k)) for k in STEP_MEANING if theirs.get(k) != ours.get(k)}
  if differ and resuming:
    changes = ", ".join(f"{k} {a!r}, not {b!r}" for k, (a, b) in differ.items())
    keep = " ".join(f"--config.{k}={a}" for k, (a, _) in differ.items())
    raise CheckpointError(
      f"{workdir} was trained with {changes}: a resumed step would then mean other examples than the checkpoint's "
      f"step count and data position describe. Resume with {keep}, or choose another --workdir."
    )
