"""Evaluation under a test protocol: masked sums of loss, top-1 and top-5 hits over the test split, each example
once, from the softmax averaged over each image's views (one centre crop, AlexNet's ten crops, GoogLeNet's 144).

The pipeline (cnnjax.data, `eval_protocol`) makes the views; here they are scored. A protocol of many views takes
as many images per step as the training batch, so an evaluation batch holds batch_size / views examples.
"""

import functools
import time

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax import data
from cnnjax.devices import AXIS, dispatched, layout_of


def eval_step(state, batch, step_config):
  """Masked sums over this batch, across devices: loss, top-1 and top-5 hits, examples. Images of several views
  ([B, views, H, W, C]) are scored by the mean of their views' softmax; one view's score is its own softmax."""
  images = batch["image"]
  views = images.shape[1] if images.ndim == 5 else 1
  images = data.normalize(images.reshape(-1, *images.shape[-3:]), step_config.mean, step_config.std)
  params = jax.tree.map(lambda p: p.astype(step_config.compute_dtype), state.params)
  variables = {"params": params, "batch_stats": state.batch_stats}
  logits, _ = state.apply_fn(variables, images.astype(step_config.compute_dtype), train=False)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  # the log of the mean probability over each image's views
  scores = jax.nn.logsumexp(log_probs.reshape(-1, views, log_probs.shape[-1]), axis=1) - jnp.log(views)
  mask, labels = batch["mask"], batch["label"]
  losses = -jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
  top5 = jnp.any(lax.top_k(scores, min(5, scores.shape[-1]))[1] == labels[:, None], axis=-1)
  sums = {
    "loss": jnp.sum(losses * mask),
    "accuracy": jnp.sum((jnp.argmax(scores, -1) == labels) * mask),
    "top5": jnp.sum(top5 * mask),
    "count": jnp.sum(mask),
  }
  return lax.psum(sums, AXIS)


def evaluate_state(p_eval, state, run) -> dict:
  """Loss, accuracy and top-5 over the whole test split (each example once) under the run's `eval_protocol`."""
  config, views = run.config, data.PROTOCOL_VIEWS[run.config.eval_protocol]
  layout = run.layout
  if views > 1:  # batch_size views a step: fewer examples, at least one per device
    split = layout.process_count * layout.local_devices
    layout = layout_of(max(split, layout.global_batch // views // split * split))
  shape = (config.image_size, config.image_size, config.channels)
  stream = data.eval_batches(run.dataset, shape, layout, config.workers, protocol=config.eval_protocol)
  with data.reading(stream) as batches:
    sums = functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), (dispatched(p_eval, state, b) for b in batches))
  sums = jax.tree.map(float, jax.device_get(sums))
  # top-5 only where there are more than 10 classes: of 10 or fewer it says little
  shown = ("loss", "accuracy", "top5") if run.dataset.num_classes > 10 else ("loss", "accuracy")
  return {f"eval_{k}": sums[k] / sums["count"] for k in shown}


def timed(p_eval, state, run) -> dict:
  """`evaluate_state`, and its cost: the protocol's views scored per second (the first evaluation of a process
  includes compiling its step)."""
  start = time.perf_counter()
  result = evaluate_state(p_eval, state, run)
  views = len(run.dataset.test) * data.PROTOCOL_VIEWS[run.config.eval_protocol]
  return result | {"views_per_s": round(views / (time.perf_counter() - start), 1)}
