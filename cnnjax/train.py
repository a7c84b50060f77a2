"""Training and evaluation: pure step functions, pmapped over the local devices, and the loop around them.

The flow of one run: config -> dataset (cnnjax.data) and model (cnnjax.models) -> `create_train_state`
(shapes from jax.eval_shape, one jitted init) -> restore the latest checkpoint, if any -> loop over
pmapped `train_step`s, metrics kept on device and fetched every `log_every_steps` -> padded, masked
evaluation -> Orbax checkpoints of the state and the data iterator's position -> curves and summary.
"""
import contextlib
import dataclasses
import functools
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cnnjax import checkpoint, data, metrics, models
from cnnjax.models import pretrained
from cnnjax import config as config_lib
from cnnjax import workdir as workdir_lib
from cnnjax.models.googlenet import AUX_HEADS

AXIS = "batch"


class TrainState(train_state.TrainState):
  batch_stats: Any


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def input_shape(config) -> tuple[int, int, int]:
  return (config.image_size, config.image_size, config.channels)


def create_model(config, num_classes: int, axis_name: str | None = None) -> nn.Module:
  """The config's model; `axis_name` synchronises BatchNorm over the pmap axis (models without BN ignore it)."""
  options = dict(config.model_options)
  if axis_name and "axis_name" in models.options(config.model):
    options["axis_name"] = axis_name
  return models.create(config.model, num_classes=num_classes, **options)


def create_learning_rate_fn(config, steps_per_epoch: int) -> optax.Schedule:
  """The paper's schedule: 'constant', 'step' (x lr_decay_factor at lr_decay_steps or lr_decay_epochs),
  'exponential' (x lr_decay_factor every lr_decay_every_epochs, GoogLeNet's 4% every 8 epochs) or
  'cosine', after an optional warm-up: 'linear' from 0, or 'constant' at warmup_lr (ResNet-110's 0.01)."""
  lr = config.learning_rate
  warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
  total = total_steps(config, steps_per_epoch)
  if config.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.schedule == "step":
    boundaries = list(config.lr_decay_steps) or [round(e * steps_per_epoch) for e in config.lr_decay_epochs]
    main = optax.piecewise_constant_schedule(lr, {b - warmup: config.lr_decay_factor for b in boundaries})
  elif config.schedule == "exponential":
    every = round(config.lr_decay_every_epochs * steps_per_epoch)
    main = optax.exponential_decay(lr, every, config.lr_decay_factor, staircase=True)
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
  else:
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: constant, step, exponential, cosine")
  if not warmup:
    return main
  if config.warmup_type == "linear":
    ramp = optax.linear_schedule(0.0, lr, warmup)
  elif config.warmup_type == "constant":
    ramp = optax.constant_schedule(config.warmup_lr)
  else:
    raise ValueError(f"unknown warmup_type {config.warmup_type!r}; valid: linear, constant")
  return optax.join_schedules([ramp, main], [warmup])


def create_optimizer(config, learning_rate_fn, classifier: str | None = None) -> optax.GradientTransformation:
  """SGD with momentum and weight decay added to the gradient (PyTorch's and Caffe's coupled form). With a
  `classifier` (trainable='head'), every other layer is frozen: its update, weight decay included, is zero."""
  sgd = optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate_fn, momentum=config.momentum or None, nesterov=config.nesterov),
  )
  if classifier is None:
    return sgd
  frozen = lambda params: {k: jax.tree.map(lambda _: k != classifier, v) for k, v in params.items()}
  return optax.chain(sgd, optax.masked(optax.set_to_zero(), frozen))


def total_steps(config, steps_per_epoch: int) -> int:
  return config.num_steps or round(config.num_epochs * steps_per_epoch)


def unsynchronised(model: nn.Module) -> nn.Module:
  """The model with BatchNorm statistics of its own batch only, for use outside the pmapped steps."""
  return model.clone(axis_name=None) if hasattr(model, "axis_name") else model


@functools.partial(jax.jit, static_argnames=("model", "shape", "dtype"))
def init_variables(key, model: nn.Module, shape: tuple, dtype=jnp.float32) -> dict:
  """{'params', 'batch_stats'} of `model` (unsynchronised: outside pmap) in `dtype`, from one jitted init.

  Jitted at the top level with the model as a static argument, so every init of an equal model (each restore's
  target shapes, each build of the same config) reuses one trace and one compiled program: a GoogLeNet init
  compiles in about 8 s here."""
  params_key, dropout_key = jax.random.split(key)
  # a float32 input as the models' float32 parameters expect, also where JAX makes float64 the default (x64)
  variables = model.init({"params": params_key, "dropout": dropout_key}, jnp.zeros((1, *shape), jnp.float32), train=True)
  return jax.tree.map(lambda v: v.astype(dtype), {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})


def create_train_state(model: nn.Module, optimizer, shape, seed: int, dtype=jnp.float32) -> TrainState:
  """A fresh TrainState: the model's initial variables (init_variables) kept in `dtype`, float32 (also for
  bfloat16 compute) or float64 where everything runs in float64, and the optimizer's initial state."""
  variables = init_variables(jax.random.key(seed), unsynchronised(model), tuple(shape), dtype)
  # jitted too: the optimizer's state is one small program rather than an eager op per parameter
  create = lambda v: TrainState.create(apply_fn=model.apply, params=v["params"], batch_stats=v["batch_stats"], tx=optimizer)
  return jax.jit(create)(variables)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy in float32, with optional label smoothing."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What a step needs besides state and batch; static, so the step is traced once."""

  model: nn.Module
  learning_rate_fn: Any
  mean: tuple
  std: tuple
  label_smoothing: float = 0.0
  aux_loss_weight: float = 0.3
  compute_dtype: Any = jnp.float32
  seed: int = 0
  classifier: str | None = None  # trainable='head': the one layer that trains; the body is a fixed feature extractor


def loss_fn(params, state: TrainState, images, labels, cfg: StepConfig, dropout_key):
  """The training objective: cross-entropy, plus GoogLeNet's auxiliary losses weighted by cfg.aux_loss_weight.

  Returns (objective, (main loss, logits, BatchNorm updates, intermediates)).
  """
  params = jax.tree.map(lambda p: p.astype(cfg.compute_dtype), params)  # bf16 compute, fp32 master weights
  frozen_body = cfg.classifier is not None
  if frozen_body:  # no backward pass through the body, which runs as in evaluation: BatchNorm on its running
    #             statistics (left as they are), no dropout
    params = {k: v if k == cfg.classifier else lax.stop_gradient(v) for k, v in params.items()}
  (logits, out), updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats}, images.astype(cfg.compute_dtype), train=not frozen_body,
      rngs={"dropout": dropout_key}, mutable=["batch_stats"],
  )  # fmt: skip
  loss = cross_entropy(logits, labels, cfg.label_smoothing)
  # GoogLeNet: "the losses of the auxiliary classifiers were weighted by 0.3" (section 5)
  aux = [cross_entropy(out[f"aux_{h}"], labels, cfg.label_smoothing) for h in AUX_HEADS if f"aux_{h}" in out]
  return loss + cfg.aux_loss_weight * sum(aux), (loss, logits, updates, out)


def train_step(state: TrainState, batch, step_config: StepConfig):
  """One SGD step on this device's share of the batch; gradients and metrics are averaged over devices."""
  cfg = step_config
  images = data.normalize(batch["image"], cfg.mean, cfg.std)
  # a fresh dropout key per step, derived from the seed: resuming needs no saved RNG. The same key on every device:
  # the models' Dropout draws the global batch's mask and keeps each device's rows (models.layers.Dropout)
  dropout_key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (loss, logits, updates, _)), grads = grad_fn(state.params, state, images, batch["label"], cfg, dropout_key)
  grads = lax.pmean(grads, AXIS)
  batch_stats = state.batch_stats if cfg.classifier else lax.pmean(updates.get("batch_stats", {}), AXIS)  # (equal
  # already when BatchNorm is synchronised)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state, lax.pmean({"loss": loss, "accuracy": accuracy, "learning_rate": cfg.learning_rate_fn(state.step - 1)}, AXIS)


def eval_step(state: TrainState, batch, step_config: StepConfig):
  """Masked sums over this batch, across devices: loss, top-1 and top-5 hits, examples."""
  cfg = step_config
  images = data.normalize(batch["image"], cfg.mean, cfg.std).astype(cfg.compute_dtype)
  params = jax.tree.map(lambda p: p.astype(cfg.compute_dtype), state.params)
  logits, _ = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images, train=False)
  logits = logits.astype(jnp.float32)
  mask, labels = batch["mask"], batch["label"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  top5 = jnp.any(lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], axis=-1)
  sums = {
      "loss": jnp.sum(losses * mask),
      "accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "top5": jnp.sum(top5 * mask),
      "count": jnp.sum(mask),
  }
  return lax.psum(sums, AXIS)


def pmapped_steps(step_config: StepConfig, devices=None):
  """(train_step, eval_step) pmapped over `devices` (default: the local devices) with axis name 'batch'.

  The state goes in unreplicated and comes out as one array per leaf (replicated over the mesh), so Orbax
  saves it as it is; the train step donates it, so parameters are updated in place.
  """
  p_train = jax.pmap(
      functools.partial(train_step, step_config=step_config), AXIS, in_axes=(None, 0), out_axes=(None, None),
      donate_argnums=(0,), devices=devices,
  )  # fmt: skip
  p_eval = jax.pmap(functools.partial(eval_step, step_config=step_config), AXIS, in_axes=(None, 0), out_axes=None, devices=devices)
  return p_train, p_eval


def device_mesh(devices=None) -> Mesh:
  return Mesh(np.array(devices or jax.local_devices()), (AXIS,))


def replicate(tree, mesh: Mesh):
  """Place a pytree on every local device once, with the sharding the pmapped step returns (so it traces once)."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def prefetch_to_device(iterator, mesh: Mesh, size: int = 2):
  """Yield (batch on device, iterator state after it), `size` batches ahead, from a background thread.

  The thread reads the next batches and copies them to the devices while the step runs, so the training
  loop's own work per step is only to dispatch it. The iterator state travels with its batch, so a checkpoint
  records the position of the last batch *trained on*, not of the last one prefetched. An error in the
  pipeline is raised in the loop, at the batch where it happened.
  """
  sharding, ready, stop = batch_sharding(mesh), queue.Queue(maxsize=size), threading.Event()

  def offer(item):  # wait for room, unless the loop has stopped taking batches
    while not stop.is_set():
      try:
        return ready.put(item, timeout=0.1)
      except queue.Full:
        pass

  def produce():
    try:
      while not stop.is_set():
        offer((jax.device_put(next(iterator), sharding), iterator.get_state()))
    except BaseException as e:  # StopIteration too: the loop sees the end where it happened
      offer(e)

  thread = threading.Thread(target=produce, name="prefetch_to_device", daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if isinstance(item, StopIteration):
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:  # the loop stopped taking batches: let the thread end and release the iterator
    stop.set()
    thread.join()


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """How a host batch [local_devices, per_device_batch, ...] lies on the mesh: one slice per device."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def normalization(dataset: data.Dataset, channels: int) -> tuple[tuple, tuple]:
  """The dataset's per-channel mean and std, converted to the model's channel count."""
  mean, std = (np.asarray(s, np.float64) for s in dataset.spec.stats)
  if len(mean) != channels:
    mean, std = (np.full(channels, s.mean()) for s in (mean, std))
  return tuple(mean.tolist()), tuple(std.tolist())


@dataclasses.dataclass
class Run:
  """Everything a run builds from its config before the first step."""

  config: ml_collections.ConfigDict
  dataset: data.Dataset
  layout: data.Layout
  steps_per_epoch: int
  total_steps: int
  step_config: StepConfig
  optimizer: optax.GradientTransformation


def build(config, dataset: data.Dataset | None = None) -> Run:
  """Dataset (the config's, unless given), model, schedule and optimizer; raises ValueError / DatasetError
  for a bad config."""
  config_lib.validate(config)
  dataset = dataset or data.load(config.dataset, config.data_dir or None, config.bad_images)
  if config.classes or config.shots:
    dataset = data.subset(dataset, config.classes, config.shots)
  layout = data.Layout(config.batch_size, jax.local_device_count(), jax.process_index(), jax.process_count())
  steps_per_epoch = max(1, len(dataset.train) // config.batch_size)
  model = create_model(config, dataset.num_classes, axis_name=AXIS)
  lr_fn = create_learning_rate_fn(config, steps_per_epoch)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}[config.dtype]
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype float64 needs JAX's 64-bit mode: set JAX_ENABLE_X64=1")
  mean, std = normalization(dataset, config.channels)
  classifier = model.CLASSIFIER if config.trainable == "head" else None
  step_config = StepConfig(model, lr_fn, mean, std, config.label_smoothing, config.aux_loss_weight, dtype, config.seed, classifier)
  optimizer = create_optimizer(config, lr_fn, classifier)
  return Run(config, dataset, layout, steps_per_epoch, total_steps(config, steps_per_epoch), step_config, optimizer)


def start_from_pretrained(run: Run, state: TrainState) -> TrainState:
  """`state` holding the weights and BatchNorm statistics of `config.init_from` (a cnnjax workdir, or torchvision
  weights for the config's model). Where the source learned another task (another dataset or classes; ImageNet for
  torchvision's files), its classifiers mean other classes: they start afresh, and the run says so."""
  config, source = run.config, run.config.init_from
  if checkpoint.is_workdir(source):
    variables = checkpoint.latest_variables(source)
    theirs = config_lib.from_workdir(source)
    same_task = (theirs.dataset, tuple(theirs.classes)) == (config.dataset, tuple(config.classes))
  else:
    variables = pretrained.from_torchvision(config.model, source)[1]
    same_task = (config.dataset, tuple(config.classes)) == ("imagenet2012", ())
    differ = {k: v for k, v in pretrained.TORCHVISION[config.model].items() if config.model_options[k] != v}
    if differ and jax.process_index() == 0:  # the same shapes, another computation: allowed, but said
      print(f"note: torchvision's {config.model} has {', '.join(f'{k}={v!r}' for k, v in differ.items())}; this config "
            f"changes it: --config.model_options.{next(iter(differ))}=... to keep it", flush=True)  # fmt: skip
  new_head = () if same_task else pretrained.heads(run.step_config.model, state.params)
  merged = pretrained.merge({"params": state.params, "batch_stats": state.batch_stats}, variables, new_head)
  if jax.process_index() == 0:
    fresh = f"; new {', '.join(new_head)} for {run.dataset.num_classes} classes of {config.dataset}" if new_head else ""
    print(f"note: started from {source}{fresh}", flush=True)
  return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])


def initial_state(run: Run) -> TrainState:
  master = jnp.float64 if run.step_config.compute_dtype == jnp.float64 else jnp.float32
  return create_train_state(run.step_config.model, run.optimizer, input_shape(run.config), run.config.seed, master)


def evaluate_state(p_eval, state, run: Run) -> dict:
  """Loss, accuracy and top-5 over the whole test split (each example once)."""
  sums = None
  for batch in data.eval_batches(run.dataset, input_shape(run.config), run.layout, run.config.workers):
    out = p_eval(state, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = float(sums["count"])
  result = {"eval_loss": float(sums["loss"]) / count, "eval_accuracy": float(sums["accuracy"]) / count}
  if run.dataset.num_classes > 10:
    result["eval_top5"] = float(sums["top5"]) / count
  return result


class Stopped(RuntimeError):
  """The run stopped on request (SIGTERM, Ctrl-C) after saving a checkpoint; `exit_code` is the signal's."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


class StopRequests:
  """SIGTERM (a preemption) or a first Ctrl-C: the loop finishes its step, saves a checkpoint and stops.
  A second Ctrl-C stops the process at once: the last completed checkpoint stays the one to resume from
  (an unfinished save is never taken for a checkpoint).

  In a run of several processes they must stop at the same step, since saving is collective: there the
  signal goes to JAX's preemption service, which agrees a step with every process, and Ctrl-C is passed on
  to it as a SIGTERM."""

  NAMES = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("Ctrl-C", 130)}

  def __init__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return  # signals reach the main thread only: a loop run elsewhere keeps the default handling
    signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      sys.stdout.flush()
      _say("error: stopped at once by a second Ctrl-C; the last completed checkpoint is kept: rerun the same "
           "command to resume from it.")  # fmt: skip
      os._exit(130)
    self.received = self.received or signum
    if signum == signal.SIGINT:
      _say("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once).")
      if jax.process_count() > 1:
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service agrees the step with the other processes

  def stop_at(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every process)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None

  def stopped(self, step: int, directory) -> Stopped:
    name, code = self.NAMES[self.received or signal.SIGTERM]
    return Stopped(f"stopped by {name} at step {step}; checkpoint saved in {directory}. Rerun the same command to "
                   "resume.", code)  # fmt: skip

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _say(text: str):
  """A line on stderr from a signal handler: os.write, since the interrupted code may be inside a print."""
  os.write(2, (text + "\n").encode())


@contextlib.contextmanager
def owned(workdir: str, announce=print):
  """The workdir claimed for this run (cnnjax.workdir): by process 0 for a run of several processes, which all
  stop if it cannot be claimed. Yields the claim (None on the other processes)."""
  held, error = None, None
  if jax.process_index() == 0:
    try:
      with workdir_lib.storage_errors():
        held = workdir_lib.Claim(workdir, jax.process_count()).acquire()
    except workdir_lib.WorkdirError as e:
      error = e
  if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(np.int32(error is None)):
    error = error or workdir_lib.WorkdirBusy(f"{workdir}: process 0 could not claim it (see its message)")
  if error is not None:
    raise error
  if held is not None and held.took_over:
    announce(f"note: took over {held.workdir} from a run that is gone ({held.took_over})")
  try:
    yield held
  finally:
    if held is not None:
      held.release()


def train_and_evaluate(config, workdir: str) -> dict:
  """Train `config` in `workdir`, resuming from its latest checkpoint; returns the final summary.

  The workdir is claimed for the run (a second run on it is refused); a checkpoint is saved every
  `checkpoint_every_steps` and when SIGTERM or Ctrl-C asks the run to stop (`Stopped`); a write that fails
  (a full disk) raises WorkdirError naming the last intact checkpoint, a NaN loss TrainingDiverged.
  """
  start = time.time()
  run = build(config)
  with owned(workdir) as claim:
    ckpt = checkpoint.Checkpointer(workdir, config, keep=config.keep_checkpoints)
    try:
      with workdir_lib.storage_errors(ckpt.advice):
        return _train(run, ckpt, claim, workdir, start)
    finally:
      with contextlib.suppress(Exception):  # on the way out after an error: the error says what happened
        ckpt.close()


def _train(run: Run, ckpt: checkpoint.Checkpointer, claim, workdir: str, start: float) -> dict:
  config = run.config
  state, data_state = ckpt.restore_latest(functools.partial(initial_state, run))
  if data_state is None and config.init_from:  # a new run: its own checkpoints, once it has them, win over init_from
    state = start_from_pretrained(run, state)
  state = replicate(state, device_mesh())
  step = int(state.step)
  train_iter = iter(data.train_batches(run.dataset, input_shape(config), run.layout, config.seed, config.augment, config.workers))
  if data_state:  # (a converted workdir has no position in any stream: it starts at the beginning)
    train_iter.set_state(data_state)
  p_train, p_eval = pmapped_steps(run.step_config)
  lead = jax.process_index() == 0  # only process 0 prints and writes metrics, event files and plots
  writer = metrics.Writer(workdir, is_lead=lead, resumed_at=step)
  progress = metrics.Progress(run.total_steps, run.steps_per_epoch, config.batch_size, first_step=step, quiet=not lead)
  eval_every = config.eval_every_steps or max(1, round(config.eval_every_epochs * run.steps_per_epoch))
  log_every = min(config.log_every_steps, eval_every)
  ckpt_every = config.checkpoint_every_steps or eval_every
  resumed = ""
  if step:
    resumed = f"; resumed at step {step}" + (": past this config's last step, nothing to train" if step >= run.total_steps else "")
  writer.note(f"{config.model} on {config.dataset}: {run.total_steps} steps of {config.batch_size} "
              f"({run.steps_per_epoch} per epoch) on {jax.local_device_count()} {jax.devices()[0].platform} device(s); "
              f"workdir {workdir}{resumed}")  # fmt: skip
  requests = StopRequests()
  batches = prefetch_to_device(train_iter, device_mesh())
  last_eval, pending = {}, []
  try:
    while step < run.total_steps:
      batch, data_state = next(batches)
      state, step_metrics = p_train(state, batch)
      pending.append(step_metrics)
      step += 1
      at_end = step == run.total_steps
      # asked once per step (a signal arriving later is seen at the next); at the last step the run just ends
      stop = requests.stop_at(step) and not at_end
      checkpoint_now = step % ckpt_every == 0 or at_end or stop
      if step % log_every == 0 or checkpoint_now:
        if claim is not None:
          claim.check()  # taken over by another run: stop before writing anything
        _log_train(pending, step, run, writer, progress)  # raises TrainingDiverged before anything is saved
        pending = []
      if (step % eval_every == 0 or at_end) and not stop:  # a stop request does not wait for an evaluation
        last_eval = evaluate_state(p_eval, state, run)
        writer.write({"step": step, "epoch": step / run.steps_per_epoch, **last_eval})
        progress.eval(step, last_eval)
      if checkpoint_now:
        ckpt.save(step, state, data_state)
      if stop:
        ckpt.wait()
        raise requests.stopped(step, ckpt.directory)
    ckpt.wait()
  finally:
    requests.restore()
    batches.close()
    progress.close()
  if not last_eval:  # resumed after the last step: evaluate what was restored
    last_eval = evaluate_state(p_eval, state, run)
  summary = {"final_step": step, **last_eval, "wall_time_s": round(time.time() - start, 1), "workdir": workdir}
  writer.finish(summary)
  return summary


def _log_train(pending, step, run: Run, writer, progress):
  fetched = jax.device_get(pending)
  losses = np.array([m["loss"] for m in fetched])
  if not np.all(np.isfinite(losses)):
    bad = step - len(losses) + int(np.argmax(~np.isfinite(losses))) + 1
    raise TrainingDiverged(f"the loss became {losses[~np.isfinite(losses)][0]} at step {bad}; stopped without saving. "
                           "The last good checkpoint is kept; lower the learning rate or check the data.")  # fmt: skip
  line = {
      "step": step,
      "epoch": step / run.steps_per_epoch,
      "train_loss": float(losses.mean()),
      "train_accuracy": float(np.mean([m["accuracy"] for m in fetched])),
      "learning_rate": float(fetched[-1]["learning_rate"]),
      "img_per_s": progress.throughput(step),
  }
  writer.write(line)
  progress.update(step, line)


def latest_state(run: Run, workdir: str) -> TrainState:
  """The state in the latest readable checkpoint of `workdir`; CheckpointError if there is none."""
  ckpt = checkpoint.Checkpointer(workdir, run.config, keep=run.config.keep_checkpoints, create=False)
  try:
    return ckpt.restore_latest(functools.partial(initial_state, run), required=True)[0]
  finally:
    ckpt.close()


def evaluate(config, workdir: str) -> dict:
  """Evaluate the latest checkpoint of `workdir` on the full test split."""
  run = build(config)
  state = latest_state(run, workdir)
  _, p_eval = pmapped_steps(run.step_config)
  return {"step": int(state.step), **evaluate_state(p_eval, replicate(state, device_mesh()), run)}
