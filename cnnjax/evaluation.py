"""Evaluation under a test protocol: loss, top-1 and top-5 over the test split, each example once, from the softmax
averaged over each image's views (one centre crop, AlexNet's ten crops, GoogLeNet's 144, or dense: the whole image
at several scales and mirrored), and over several networks for an ensemble.

The pipeline (cnnjax.data, `eval_protocol`) makes the views; here they are scored. The crop protocols run in the
pmapped `eval_step` (masked sums, all-reduced); a protocol of many views takes as many images per step as the
training batch, so an evaluation batch holds batch_size / views examples. Dense views differ in shape from image to
image: they are grouped by shape and scored by a step compiled once per shape on this host's devices, which keeps
each example's probabilities; so are ensembles, whose members' probabilities are averaged before scoring.
"""

import collections
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from cnnjax import data, models
from cnnjax.config import input_shape
from cnnjax.data import recipes
from cnnjax.devices import AXIS, batch_sharding, device_mesh, dispatched, layout_of
from cnnjax.models import dense


def _variables(state, step_config) -> dict:
  params = jax.tree.map(lambda p: p.astype(step_config.compute_dtype), state.params)
  return {"params": params, "batch_stats": state.batch_stats}


def _log_softmax(logits):
  return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))


def view_scores(state, images, step_config):
  """Log of the mean softmax over each image's views, [B, classes]: images [B, views, H, W, C] or [B, H, W, C]."""
  views = images.shape[1] if images.ndim == 5 else 1
  images = data.normalize(images.reshape(-1, *images.shape[-3:]), step_config.mean, step_config.std)
  logits, _ = state.apply_fn(_variables(state, step_config), images.astype(step_config.compute_dtype), train=False)
  log_probs = _log_softmax(logits)
  return jax.nn.logsumexp(log_probs.reshape(-1, views, log_probs.shape[-1]), axis=1) - jnp.log(views)


def metric_sums(scores, labels, mask) -> dict:
  """Masked sums of the loss, top-1 and top-5 hits and the examples, for log-probability `scores` [B, classes]."""
  losses = -jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
  top5 = jnp.any(lax.top_k(scores, min(5, scores.shape[-1]))[1] == labels[:, None], axis=-1)
  return {
    "loss": jnp.sum(losses * mask),
    "accuracy": jnp.sum((jnp.argmax(scores, -1) == labels) * mask),
    "top5": jnp.sum(top5 * mask),
    "count": jnp.sum(mask),
  }


def eval_step(state, batch, step_config):
  """Masked sums over this batch, across devices: loss, top-1 and top-5 hits, examples. Images of several views
  ([B, views, H, W, C]) are scored by the mean of their views' softmax; one view's score is its own softmax."""
  scores = view_scores(state, batch["image"], step_config)
  return lax.psum(metric_sums(scores, batch["label"], batch["mask"]), AXIS)


def _crop_batches(run):
  """The test split's batches under the run's crop protocol."""
  config = run.config
  shape, protocol = input_shape(config), config.eval_protocol
  return data.eval_batches(run.dataset, shape, _crop_layout(run), config.workers, protocol=protocol)


def _crop_layout(run) -> data.Layout:
  """The run's layout, or for a protocol of V views one of batch_size / V examples (at least one per device)."""
  layout, views = run.layout, data.views_per_image(run.config.eval_protocol)
  if views == 1:
    return layout
  split = layout.process_count * layout.local_devices
  return layout_of(max(split, layout.global_batch // views // split * split))


def evaluate_state(p_eval, state, run) -> dict:
  """Loss, accuracy and top-5 over the whole test split (each example once) under the run's `eval_protocol`."""
  if run.config.eval_protocol == "dense":
    return summarize(*log_probabilities(state, run), run.dataset.num_classes)
  with data.reading(_crop_batches(run)) as batches:
    sums = functools.reduce(lambda a, b: jax.tree.map(jnp.add, a, b), (dispatched(p_eval, state, b) for b in batches))
  return _shown(jax.tree.map(float, jax.device_get(sums)), run.dataset.num_classes)


def _shown(sums: dict, num_classes: int) -> dict:
  # top-5 only where there are more than 10 classes: of 10 or fewer it says little
  shown = ("loss", "accuracy", "top5") if num_classes > 10 else ("loss", "accuracy")
  return {f"eval_{k}": sums[k] / sums["count"] for k in shown}


def summarize(log_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """The metrics of this host's examples' log mean probabilities [n, classes], summed over every host."""
  sums = metric_sums(jnp.asarray(log_probs, jnp.float32), jnp.asarray(labels), jnp.ones(len(labels)))
  totals = np.array([float(sums[k]) for k in ("loss", "accuracy", "top5", "count")])
  if jax.process_count() > 1:
    totals = np.asarray(multihost_utils.process_allgather(totals)).sum(0)
  return _shown(dict(zip(("loss", "accuracy", "top5", "count"), map(float, totals))), num_classes)


def log_probabilities(state, run) -> tuple[np.ndarray, np.ndarray]:
  """(log mean probabilities [n, classes] float64, labels [n]) of this host's test examples under the run's protocol,
  in the order of its share of the test split (every host's order is fixed: an ensemble's members line up). Logs,
  as a confidently wrong network's probabilities underflow."""
  step_config, mesh = run.step_config, device_mesh()
  if run.config.eval_protocol == "dense":
    return _dense_log_probabilities(state, run, mesh)
  kept, labels = [], []
  with data.reading(_crop_batches(run)) as batches:
    for batch in batches:
      real = batch["mask"].reshape(-1) > 0
      images = jax.device_put(batch["image"], batch_sharding(mesh))
      kept.append(np.asarray(_view_log_probabilities(state, images, step_config), np.float64)[real])
      labels.append(batch["label"].reshape(-1)[real])
  return np.concatenate(kept), np.concatenate(labels)


@functools.partial(jax.jit, static_argnames="step_config")  # traced once per step_config and shape
def _view_log_probabilities(state, images, step_config):
  """Log mean probabilities over each image's views of a host batch [devices, per_device, (views,) H, W, C]."""
  return view_scores(state, images.reshape(-1, *images.shape[2:]), step_config)


@functools.partial(jax.jit, static_argnames="step_config")
def dense_step(state, images, step_config):
  """Log mean probabilities [B, classes] of uint8 images [B, H, W, C] and their mirrors, each scored by its whole
  class-score map averaged (models/dense.py)."""
  x = data.normalize(images, step_config.mean, step_config.std).astype(step_config.compute_dtype)
  score = functools.partial(
    dense.dense_logits, models.unsynchronised(step_config.model), _variables(state, step_config)
  )
  logits, mirrored = score(x), score(x[:, :, ::-1])
  return jnp.logaddexp(_log_softmax(logits), _log_softmax(mirrored)) - jnp.log(2.0)


def check_dense(config, model):
  """ValueError, in one line, where a run asks for a dense evaluation its model cannot give."""
  if config.eval_protocol != "dense":
    return
  if not dense.has_dense_form(model):
    raise ValueError(f"model {config.model!r} has no fully-convolutional form for eval_protocol 'dense'")
  grid = model.FC_GRID
  if grid and not getattr(model, "global_pool", False) and config.image_size < 224:
    raise ValueError(
      f"eval_protocol 'dense' on {config.model} needs image_size 224 or more: fc6 reads a {grid}x{grid} map of a "
      f"224 input (this config has {config.image_size})"
    )


def _dense_log_probabilities(state, run, mesh) -> tuple[np.ndarray, np.ndarray]:
  """Every local test image at each of `eval_scales`, grouped by shape, a group scored when it fills a step (as
  many pixels per device as a training batch at most, at least one image per device)."""
  config, layout, test = run.config, run.layout, run.dataset.test
  shape, scales = input_shape(config), config.eval_scales
  local = np.arange(layout.process_index, len(test), layout.process_count)
  sums, labels = np.full((len(local), run.dataset.num_classes), -np.inf), np.zeros(len(local), np.int32)
  sharding, groups = NamedSharding(mesh, PartitionSpec(AXIS)), collections.defaultdict(list)
  per_device = layout.global_batch // (layout.process_count * layout.local_devices)

  def fill(h, w) -> int:  # images per step of this shape
    return layout.local_devices * max(1, per_device * config.image_size**2 // (h * w))

  def flush(key):
    positions, views = zip(*groups.pop(key))
    # a group left over at the end: padded to a power of two per device, not to a full step (few shapes, little waste)
    per_step = min(
      fill(*key[:2]), layout.local_devices * 2 ** math.ceil(math.log2(-(-len(views) // layout.local_devices)))
    )
    images = np.zeros((per_step, *key), np.uint8)
    images[: len(views)] = views
    scored = dense_step(state, jax.device_put(images, sharding), run.step_config)
    np.logaddexp.at(sums, list(positions), np.asarray(scored, np.float64)[: len(views)])  # (a sum of probabilities)

  for start in range(0, len(local), 32):
    chunk = local[start : start + 32]
    records = test.__getitems__(chunk.tolist()) if hasattr(test, "__getitems__") else [test[int(i)] for i in chunk]
    for position, record in enumerate(records, start):
      labels[position] = record["label"]
      for view in recipes.dense_views(record["image"], shape, scales):
        groups[view.shape].append((position, view))
        if len(groups[view.shape]) == fill(*view.shape[:2]):
          flush(view.shape)
  for key in list(groups):
    flush(key)
  return sums - np.log(len(scales)), labels


def timed(evaluate, examples: int, views: int) -> dict:
  """`evaluate()`'s metrics and their cost: test images and views scored per second (the first evaluation of a
  process includes compiling its step)."""
  start = time.perf_counter()
  result = evaluate()
  seconds = time.perf_counter() - start
  rates = {"images_per_s": examples / seconds, "views_per_s": examples * views / seconds}
  return result | {k: float(f"{v:.4g}") for k, v in rates.items()}  # 4 digits: 0.1067 as 1322.8


def ensemble(members) -> dict:
  """The metrics of several (run, state) pairs' probabilities averaged, each member under its own config (its
  model, input size and protocol); they must share the test set and its classes."""
  first = members[0][0]
  for run, _ in members[1:]:
    theirs, ours = (run.config.dataset, run.config.classes), (first.config.dataset, first.config.classes)
    if theirs != ours:
      raise ValueError(f"an ensemble's members must be evaluated on one test set: {ours} and {theirs} differ")
  outputs = [log_probabilities(state, run) for run, state in members]
  if any(not np.array_equal(labels, outputs[0][1]) for _, labels in outputs):
    raise ValueError(
      "an ensemble's members read different labels from their test sets: give them one --config.data_dir"
    )
  mean = np.logaddexp.reduce([p for p, _ in outputs], axis=0) - np.log(len(outputs))  # of the probabilities
  return summarize(mean, outputs[0][1], first.dataset.num_classes)
