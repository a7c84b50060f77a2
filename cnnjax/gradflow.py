"""Gradient flow: how large each layer's gradient is, from the input end to the output end, at given steps.

    python -m cnnjax.gradflow --config=configs/cifar_resnet.py:20,local --workdir=W --steps=0,100 \\
        --config.model_options.activation=sigmoid --config.model_options.norm=none

Writes W/gradflow.json: `layers`, the weighted layers (conv, dense) in forward order, each with `name`,
`depth` and `grad_norm` at the first requested step; `steps`, the same per requested step with activation
statistics of each named intermediate; and W/gradflow.png, gradient norm against depth, one line per step.
Gradients are those of the training loss on one fixed probe batch (the first training batch), on one
device; between the requested steps the model trains with its config's recipe on all local devices.
"""

import contextlib
import dataclasses
import functools
import itertools
import json
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from cnnjax import cli, complexity, data, devices, metrics, models, train
from cnnjax import config as config_lib

FLAGS = flags.FLAGS


def weighted_layers(tree) -> list[tuple[tuple, str, object]]:
  """(module path, name, kernel) of every conv and dense layer, in the tree's key order."""
  found = []

  def walk(node, path):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, path + (key,))
      elif key.startswith("kernel"):
        found.append((path, "/".join(path + (key,) if key != "kernel" else path), value))

  walk(tree, ())
  return found


def forward_order(model: nn.Module, variables, images) -> list[int]:
  """The indices of weighted_layers(variables['params']) in the order the layers run.

  Parameter dicts come out of JAX sorted by name (conv2_10 before conv2_2, fc before inception_3a), so the
  order is recorded from an abstract forward pass: each module's first call.
  """
  calls = _first_calls(model, images.shape)
  layers = weighted_layers(variables["params"])
  return sorted(range(len(layers)), key=lambda i: calls[layers[i][0]])


@functools.lru_cache(maxsize=8)  # one trace per model and input shape, however many steps are measured
def _first_calls(model: nn.Module, shape: tuple) -> dict:
  """{module path: the rank of its first call} in an abstract training forward pass (an init) on `shape`."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    calls.setdefault(context.module.path, len(calls))
    return next_fun(*args, **kwargs)

  def init(images):
    return model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, images, train=True)

  with nn.intercept_methods(record):
    jax.eval_shape(init, jax.ShapeDtypeStruct(shape, jnp.float32))
  return calls


@functools.partial(jax.jit, static_argnames="step_config")
def _measure(params, batch_stats, images, labels, step_config: train.StepConfig):
  # the state is rebuilt here: a TrainState argument would carry its apply_fn, a new object each time,
  # into the jit cache key and recompile every call
  state = train.TrainState(
    step=0, apply_fn=step_config.model.apply, params=params, tx=None, opt_state=None, batch_stats=batch_stats
  )
  grads, (_, _, _, out) = jax.grad(train.loss_fn, has_aux=True)(
    params,
    state,
    data.normalize(images, step_config.mean, step_config.std),
    labels,
    step_config,
    jax.random.key(step_config.seed),
  )
  norms = [jnp.linalg.norm(g.astype(jnp.float32)) for _, _, g in weighted_layers(grads)]
  stats = {k: (jnp.mean(v), jnp.std(v)) for k, v in out.items() if not k.startswith("aux")}
  return norms, stats


def profile(state: train.TrainState, batch: dict, step_config: train.StepConfig) -> dict:
  """Per-layer gradient norms of the training objective (in forward order) and per-intermediate activation
  statistics (by name) for one batch, on one device."""
  images = batch["image"].reshape(-1, *batch["image"].shape[2:])
  labels = batch["label"].reshape(-1)
  # one device, the whole probe batch: BatchNorm needs no cross-device axis here
  one_device = dataclasses.replace(step_config, model=models.unsynchronised(step_config.model))
  norms, stats = jax.device_get(
    _measure(state.params, state.batch_stats, images=images, labels=labels, step_config=one_device)
  )
  names = [name for _, name, _ in weighted_layers(state.params)]
  order = forward_order(
    one_device.model, {"params": state.params, "batch_stats": state.batch_stats}, images.astype("float32")
  )
  return {
    "layers": [{"name": names[i], "depth": d + 1, "grad_norm": float(norms[i])} for d, i in enumerate(order)],
    "activations": [{"name": k, "mean": float(m), "std": float(s)} for k, (m, s) in stats.items()],
  }


def training_batches(run: train.Run):
  """The run's training batches in order, read until the `with` block ends; the first is the probe batch every
  measurement uses."""
  config = run.config
  return data.reading(
    data.train_batches(
      run.dataset, train.input_shape(config), layout=run.layout, seed=config.seed, augment=config.augment
    )
  )


def run(config, workdir: str, steps: list[int]) -> dict:
  """Measure at each of `steps`, training in between; write gradflow.json and gradflow.png into workdir."""
  steps = sorted(set(steps))
  run = train.build(config)
  mesh = devices.device_mesh()
  state = devices.replicate(train.initial_state(run), mesh)
  p_train, _ = train.pmapped_steps(run.step_config)
  results, done = [], 0
  with training_batches(run) as stream:
    probe = next(stream)
    with contextlib.closing(devices.prefetch_to_device(stream, mesh)) as batches:
      for step in steps:
        for batch, _ in itertools.islice(batches, step - done):
          state, _ = p_train(state, batch)
        done = step
        results.append({"step": step, **profile(state, probe, run.step_config)})
  report = {
    "model": config.model,
    "model_options": dict(config.model_options),
    "probe_batch": int(probe["label"].size),
    "layers": results[0]["layers"],
    "steps": results,
  }
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "gradflow.json").write_text(json.dumps(report, indent=1))
  plot(report, workdir / "gradflow.png")
  return report


def plot(report: dict, path):
  with metrics.figure(path, figsize=(7, 4)) as ax:
    for result in report["steps"]:
      depths = [layer["depth"] for layer in result["layers"]]
      norms = np.maximum([layer["grad_norm"] for layer in result["layers"]], 1e-45)  # a vanished gradient still shows
      ax.semilogy(depths, norms, "o-", markersize=3, label=f"step {result['step']}")
    # the options that change the network, not every option the config lists
    changing = complexity.changing_options(report["model"], report["model_options"])
    options = ", ".join(f"{k}={v}" for k, v in changing.items()) or "as in its paper"
    ax.set(xlabel="depth (weighted layer, input to output)", ylabel="gradient norm")
    # every option, wrapped to the figure's width (on one line they ran off both edges)
    ax.set_title(textwrap.fill(f"{report['model']}: {options}", 95), fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)  # depths are whole layers
    ax.grid(alpha=0.3, which="both")
    ax.legend()


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  config_flags.DEFINE_config_file("config", None, "Config file, as for cnnjax.main.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where gradflow.json and gradflow.png go.")
  cli.define_integer_list("steps", "0", "Training steps at which to measure (0: at initialisation).")


def main(argv):
  del argv
  cli.start()
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  report = run(config_lib.from_command_line(FLAGS["config"]), FLAGS.workdir, [int(s) for s in FLAGS.steps])
  for result in report["steps"]:
    first, last = result["layers"][0], result["layers"][-2 if len(result["layers"]) > 1 else -1]
    print(
      f"step {result['step']}: first layer {first['name']} |grad| {first['grad_norm']:.3g}, "
      f"last hidden layer {last['name']} |grad| {last['grad_norm']:.3g}"
    )
  print(f"wrote {FLAGS.workdir}/gradflow.json and gradflow.png")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
