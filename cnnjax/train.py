"""Training: the state, the pure steps (pmapped over the local devices), `build` and the loop around them.

One run: config -> `build` -> the latest checkpoint, else `create_train_state` -> pmapped `train_step`s, metrics
fetched every `log_every_steps` -> masked evaluation -> Orbax checkpoints of the state and data position.
"""

import contextlib
import dataclasses
import functools
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

from cnnjax import checkpoint, data, evaluation, metrics, models, optim, stopping
from cnnjax import config as config_lib
from cnnjax import workdir as workdir_lib
from cnnjax.config import input_shape  # (also train.input_shape for the commands that build runs)
from cnnjax.devices import AXIS, device_mesh, layout_of, prefetch_to_device, replicate
from cnnjax.errors import TrainingDiverged
from cnnjax.init_from import start_from
from cnnjax.models.outputs import auxiliary_logits


class TrainState(train_state.TrainState):
  batch_stats: Any


@functools.partial(jax.jit, static_argnames=("model", "shape", "dtype"))
def init_variables(key, model: nn.Module, shape: tuple, dtype=jnp.float32) -> dict:
  """{'params', 'batch_stats'} of `model` (unsynchronised: outside pmap) in `dtype`, from one jitted init.

  Jitted at the top level with the model as a static argument, so every init of an equal model (each restore's
  target shapes, each build of the same config) reuses one trace and one compiled program."""
  rngs = dict(zip(("params", "dropout"), jax.random.split(key)))
  # a float32 input as the models' float32 parameters expect, also where JAX makes float64 the default (x64)
  variables = model.init(rngs, jnp.zeros((1, *shape), jnp.float32), train=True)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  return jax.tree.map(lambda v: v.astype(dtype), variables)


def create_train_state(model: nn.Module, optimizer, shape, seed: int, dtype=jnp.float32) -> TrainState:
  """A fresh TrainState: the model's initial variables (init_variables) kept in `dtype`, float32 (also for
  bfloat16 compute) or float64 where everything runs in float64, and the optimizer's initial state."""
  variables = init_variables(jax.random.key(seed), models.unsynchronised(model), shape=tuple(shape), dtype=dtype)
  create = functools.partial(TrainState.create, apply_fn=model.apply, tx=optimizer)
  # jitted too: the optimizer's state is one small program rather than an eager op per parameter
  return jax.jit(lambda v: create(params=v["params"], batch_stats=v["batch_stats"]))(variables)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Mean softmax cross-entropy in float32 at least (float64 runs keep float64), with optional label smoothing."""
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
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


def loss_fn(params, state: TrainState, images, labels, step_config: StepConfig, dropout_key):
  """The training objective: cross-entropy, plus the loss of every auxiliary classifier the model returns
  (GoogLeNet's: "weighted by 0.3", section 5) weighted by `aux_loss_weight`.

  Returns (objective, (main loss, logits, BatchNorm updates, intermediates)).
  """
  params = jax.tree.map(lambda p: p.astype(step_config.compute_dtype), params)  # bf16 compute, fp32 master weights
  frozen_body = step_config.classifier is not None
  if frozen_body:  # no backward pass through the body, which runs as in evaluation: BatchNorm on its running
    # statistics (left as they are), no dropout
    params = {k: v if k == step_config.classifier else lax.stop_gradient(v) for k, v in params.items()}
  (logits, out), updates = state.apply_fn(
    {"params": params, "batch_stats": state.batch_stats},
    images.astype(step_config.compute_dtype),
    train=not frozen_body,
    rngs={"dropout": dropout_key},
    mutable=["batch_stats"],
  )
  smoothing = step_config.label_smoothing
  loss = cross_entropy(logits, labels, smoothing)
  aux = [cross_entropy(aux_logits, labels, smoothing) for aux_logits in auxiliary_logits(out).values()]
  return loss + step_config.aux_loss_weight * sum(aux), (loss, logits, updates, out)


def train_step(state: TrainState, batch, step_config: StepConfig):
  """One SGD step on this device's share of the batch; gradients and metrics are averaged over devices."""
  images = data.normalize(batch["image"], step_config.mean, step_config.std)
  # a fresh dropout key per step, derived from the seed: resuming needs no saved RNG. The same key on every device:
  # the models' Dropout draws the global batch's mask and keeps each device's rows (models.layers.Dropout)
  dropout_key = jax.random.fold_in(jax.random.key(step_config.seed), state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (_, (loss, logits, updates, _)), grads = grad_fn(
    state.params, state, images, batch["label"], step_config, dropout_key
  )
  grads = lax.pmean(grads, AXIS)
  # (averaging statistics of synchronised BatchNorm changes nothing: they are equal already)
  batch_stats = state.batch_stats if step_config.classifier else lax.pmean(updates.get("batch_stats", {}), AXIS)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state, lax.pmean(
    {"loss": loss, "accuracy": accuracy, "learning_rate": step_config.learning_rate_fn(state.step - 1)}, AXIS
  )


def pmapped_steps(step_config: StepConfig, devices=None):
  """(train_step, eval_step) pmapped over `devices` (default: the local devices) with axis name 'batch'.

  The state goes in unreplicated and comes out as one array per leaf (replicated over the mesh), so Orbax
  saves it as it is; the train step donates it, so parameters are updated in place.
  """

  def pmapped(step, out_axes, **donate):
    bound = functools.partial(step, step_config=step_config)
    return jax.pmap(bound, axis_name=AXIS, in_axes=(None, 0), out_axes=out_axes, devices=devices, **donate)

  return pmapped(train_step, (None, None), donate_argnums=(0,)), pmapped(evaluation.eval_step, None)


@dataclasses.dataclass
class Run:
  """Everything a run builds from its config before the first step."""

  config: ml_collections.ConfigDict
  dataset: data.Dataset
  layout: data.Layout
  steps_per_epoch: int
  step_config: StepConfig
  optimizer: optax.GradientTransformation

  @property
  def total_steps(self) -> int:
    return optim.total_steps(self.config, self.steps_per_epoch)


def build(config, dataset: data.Dataset | None = None) -> Run:
  """Dataset (the config's, unless given), model, schedule and optimizer; raises ValueError / DatasetError
  for a bad config."""
  config_lib.validate(config)
  data.check_recipe(config.augment, data.style(config.dataset))
  data.check_protocol(config.eval_protocol, data.style(config.dataset), input_shape(config))
  dataset = dataset or data.load(config.dataset, config.data_dir or None, config.bad_images)
  if config.classes or config.shots:
    dataset = data.subset(dataset, config.classes, config.shots)
  layout = layout_of(config.batch_size)
  steps_per_epoch = max(1, len(dataset.train) // config.batch_size)  # (evaluation may see a tiny training split)
  model = models.create(config.model, dataset.num_classes, axis_name=AXIS, **config.model_options)
  evaluation.check_dense(config, model)
  learning_rate_fn = optim.schedule(config, steps_per_epoch)
  mean, std = dataset.normalization(config.channels)
  classifier = model.CLASSIFIER if config.trainable == "head" else None
  step_config = StepConfig(
    model=model,
    learning_rate_fn=learning_rate_fn,
    mean=mean,
    std=std,
    label_smoothing=config.label_smoothing,
    aux_loss_weight=config.aux_loss_weight,
    compute_dtype=jnp.dtype(config.dtype),
    seed=config.seed,
    classifier=classifier,
  )
  return Run(
    config=config,
    dataset=dataset,
    layout=layout,
    steps_per_epoch=steps_per_epoch,
    step_config=step_config,
    optimizer=optim.sgd(config, learning_rate_fn, classifier),
  )


def initial_state(run: Run) -> TrainState:
  master = jnp.float64 if run.step_config.compute_dtype == jnp.float64 else jnp.float32
  model, config = run.step_config.model, run.config
  return create_train_state(model, run.optimizer, shape=input_shape(config), seed=config.seed, dtype=master)


def train_and_evaluate(config, workdir: str) -> dict:
  """Train `config` in `workdir`, resuming from its latest checkpoint; returns the final summary.

  The workdir is claimed for the run (a second run on it is refused); a checkpoint is saved every
  `checkpoint_every_steps` and when SIGTERM or Ctrl-C asks the run to stop (`errors.Stopped`); a write that
  fails (a full disk) raises WorkdirError naming the last intact checkpoint, a NaN loss TrainingDiverged.
  """
  start = time.time()
  run = build(config)
  run.layout.check_fits(run.dataset)
  lead = jax.process_index() == 0  # only process 0 prints and writes metrics, event files and plots
  with workdir_lib.claim(workdir, jax.process_count(), lead=lead) as claim:
    ckpt = checkpoint.Checkpointer(workdir, config, keep=config.keep_checkpoints)
    try:
      with workdir_lib.storage_errors(ckpt.advice):
        state, data_state = ckpt.restore_latest(functools.partial(initial_state, run))
        if data_state is None and config.init_from:  # a new run: its own checkpoints, once made, win over init_from
          state = start_from(state, config, model=run.step_config.model, num_classes=run.dataset.num_classes)
        state = replicate(state, device_mesh())
        writer = metrics.Writer(workdir, is_lead=lead, resumed_at=int(state.step))
        writer.note(_start_line(run, int(state.step), workdir))
        steps = pmapped_steps(run.step_config)
        state, last_eval = _train_loop(run, state, data_state, steps=steps, ckpt=ckpt, claim=claim, writer=writer)
        last_eval = last_eval or evaluation.evaluate_state(
          steps[1], state, run
        )  # resumed after the last step: what was restored
        wall_time = round(time.time() - start, 1)
        summary = {"final_step": int(state.step), **last_eval, "wall_time_s": wall_time, "workdir": workdir}
        writer.finish(summary)
        return summary
    finally:
      with contextlib.suppress(Exception):  # on the way out after an error: the error says what happened
        ckpt.close()


def _train_loop(run: Run, state, data_state, steps, ckpt: checkpoint.Checkpointer, claim, writer):
  """Train from `state` (replicated) and the data position `data_state` to the last step; returns the final
  state and the last evaluation ({} if nothing was left to train)."""
  config, (p_train, p_eval), step = run.config, steps, int(state.step)
  progress = metrics.Progress(
    run.total_steps, run.steps_per_epoch, config.batch_size, first_step=step, quiet=not writer.is_lead
  )
  eval_every = config.eval_every_steps or max(1, round(config.eval_every_epochs * run.steps_per_epoch))
  log_every = min(config.log_every_steps, eval_every)
  ckpt_every = config.checkpoint_every_steps or eval_every
  requests, last_eval, pending = stopping.StopRequests(), {}, []
  stream = data.train_batches(
    run.dataset, input_shape(config), run.layout, seed=config.seed, augment=config.augment, workers=config.workers
  )
  with data.reading(stream) as train_iter:
    if data_state:  # (a converted workdir has no position in any stream: it starts at the beginning)
      train_iter.set_state(data_state)
    batches = prefetch_to_device(train_iter, device_mesh())
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
          _log_train(pending, step, run, writer=writer, progress=progress)  # a NaN raises before anything is saved
          pending = []
        if (step % eval_every == 0 or at_end) and not stop:  # a stop request does not wait for an evaluation
          last_eval = evaluation.evaluate_state(p_eval, state, run)
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
      batches.close()  # the prefetch thread stops and is joined before the pipeline's readers are
      progress.close()
  return state, last_eval


def _start_line(run: Run, step: int, workdir: str) -> str:
  config, devices = run.config, f"{jax.local_device_count()} {jax.devices()[0].platform} device(s)"
  steps = f"{run.total_steps} steps of {config.batch_size} ({run.steps_per_epoch} per epoch)"
  resumed = f"; resumed at step {step}" if step else ""
  resumed += ": past this config's last step, nothing to train" if step >= run.total_steps else ""
  return f"{config.model} on {config.dataset}: {steps} on {devices}; workdir {workdir}{resumed}"


def _log_train(pending, step, run: Run, writer, progress):
  fetched = jax.device_get(pending)
  losses = np.array([m["loss"] for m in fetched])
  if not np.all(np.isfinite(losses)):
    bad = step - len(losses) + int(np.argmax(~np.isfinite(losses))) + 1
    raise TrainingDiverged(
      f"the loss became {losses[~np.isfinite(losses)][0]} at step {bad}; stopped without saving. "
      "The last good checkpoint is kept; lower the learning rate or check the data."
    )
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
  return checkpoint.latest_state(workdir, run.config, functools.partial(initial_state, run))


def evaluate(config, workdir: str) -> dict:
  """Evaluate the latest checkpoint of `workdir` on the full test split."""
  return evaluate_ensemble([config], [workdir])


def evaluate_ensemble(configs, workdirs) -> dict:
  """Evaluate the latest checkpoint of each workdir on the full test split, several by their softmax averaged (an
  ensemble, as every winner's submission was)."""
  members = []
  for config, workdir in zip(configs, workdirs, strict=True):
    run = build(config)
    members.append((run, replicate(latest_state(run, workdir), device_mesh())))
  run, state = members[0]
  if len(members) == 1:
    p_eval = pmapped_steps(run.step_config)[1]
    metrics = functools.partial(evaluation.evaluate_state, p_eval, state, run)
  else:
    metrics = functools.partial(evaluation.ensemble, members)
  views = sum(data.views_per_image(r.config.eval_protocol, r.config.eval_scales) for r, _ in members)
  steps = [int(s.step) for _, s in members]
  which = {"step": steps[0]} if len(steps) == 1 else {"models": len(steps), "steps": ",".join(map(str, steps))}
  return which | {"protocol": run.config.eval_protocol} | evaluation.timed(metrics, len(run.dataset.test), views)
