"""How fast a config trains on whatever backend is present: start-up, compile, step time, img/s, memory, MFU.

    python -m cnnjax.bench --config=configs/cifar_resnet.py:20                     # the step alone, fake input
    python -m cnnjax.bench --config=configs/resnet.py:50 --config.batch_size=16 --format=json
    python -m cnnjax.bench --config=configs/lenet5.py --input=real                 # fed by the real pipeline
    python -m cnnjax.bench --config=configs/resnet.py:50 --protocols=center,ten_crop,googlenet144,dense

Same --config and overrides as cnnjax.main. `--input=fake` reuses one batch already on the devices, so it
times the train step alone; `--input=real` feeds the config's dataset through the real pipeline. Step time is
the median over windows of --window steps (one host sync per window, none inside it); compile time is the
first step's time less one steady step; `host_ms_per_step` is the loop thread's own CPU time per step (taking
the next device batch, dispatching the step): waiting for a CPU device costs no CPU time, but a GPU runtime
spins while it waits, so on GPUs the figure is an upper bound. Start-up runs from the process's start to the
first finished step, with the persistent compilation cache as users have it (--nocompilation_cache: cold).
FLOPs per image are 3 x 2 x the model's multiply-adds (forward, and a backward of twice the forward).
`--protocols` times evaluation instead, under each test protocol, on --images JPEG photos of ImageNet's usual sizes
(375x500, every third 500x375), random weights: images and views per second of a second pass (the first compiles
every shape it meets, and is reported too).
A benchmark, not a test: tests only check that it runs and reports every field.
"""

import contextlib
import dataclasses
import functools
import json
import resource
import statistics
import tempfile
import time

import jax
import psutil
from absl import flags
from ml_collections import config_flags

from cnnjax import cli, complexity, data, devices, models, train
from cnnjax import config as config_lib

FLAGS = flags.FLAGS

# Dense bf16 peak per device in FLOP/s, from the vendors' data sheets, by a substring of jax's device_kind.
PEAK_BF16_FLOPS = (
  ("H200", 989e12),  # H200 SXM: as H100 SXM
  ("H100 PCIe", 756e12),
  ("H100", 989e12),  # H100 SXM
  ("A100", 312e12),
  ("TPU v4", 275e12),
  ("TPU v5 lite", 197e12),  # v5e
  ("TPU v6 lite", 918e12),  # Trillium
)
# Classes of the datasets a fake batch stands in for (the rest have 10).
CLASSES = {"imagenet2012": 1000, "cifar100": 100}


def peak_flops(device_kind: str) -> float | None:
  return next((peak for kind, peak in PEAK_BF16_FLOPS if kind in device_kind), None)


def run(config, input_kind: str = "fake", steps: int = 20, window: int = 5, warmup: int = 2) -> dict:
  """Measure `config`'s train and eval steps; returns the report (see the module docstring)."""
  if input_kind not in ("fake", "real"):
    raise ValueError(f"unknown --input {input_kind!r}; valid: fake, real")
  shape = train.input_shape(config)
  fake = (
    data.load(f"fake:{'x'.join(map(str, shape))}:{CLASSES.get(config.dataset, 10)}") if input_kind == "fake" else None
  )
  run = train.build(config, dataset=fake)
  mesh = devices.device_mesh()
  state = devices.replicate(train.initial_state(run), mesh)
  p_train, p_eval = train.pmapped_steps(run.step_config)
  stream = data.train_batches(
    run.dataset, shape, layout=run.layout, seed=config.seed, augment=config.augment, workers=config.workers
  )
  with data.reading(stream) as read, contextlib.closing(devices.prefetch_to_device(read, mesh)) as fed:
    batches = fed
    if fake is not None:
      batch, _ = next(fed)
      batches = iter(lambda: (batch, None), None)  # the same device batch every step: the step alone
    state, timing = _time_train(p_train, state, batches=batches, steps=steps, window=window, warmup=warmup)
  with data.reading(data.eval_batches(run.dataset, shape, run.layout)) as read:
    eval_batch = jax.device_put(next(read), devices.batch_sharding(mesh))
  jax.block_until_ready(p_eval(state, eval_batch))  # compile
  start = time.perf_counter()
  for _ in range(window):
    out = p_eval(state, eval_batch)
  jax.block_until_ready(out)
  eval_s = (time.perf_counter() - start) / window
  macs = complexity.cost(models.unsynchronised(run.step_config.model), shape).macs
  return _report(config, input_kind, shape=shape, macs=macs, timing=timing, eval_s=eval_s)


def protocol_costs(config, protocols, images: int, folder: str) -> list[dict]:
  """Evaluation under each of `protocols` of `images` photos written to `folder` (see the module docstring)."""
  from cnnjax import evaluation
  from cnnjax.throughput import imagenet_like

  photos = imagenet_like(folder, images, classes=1, portraits=True)
  config.dataset, config.augment = "imagenet2012", "none"  # the photos stand in for its validation images
  dataset = dataclasses.replace(photos, test=photos.train, num_classes=CLASSES["imagenet2012"])
  rows = []
  for protocol in protocols:
    config.eval_protocol = protocol
    run = train.build(config, dataset=dataset)
    state = devices.replicate(train.initial_state(run), devices.device_mesh())
    evaluate = functools.partial(evaluation.evaluate_state, train.pmapped_steps(run.step_config)[1], state, run)
    first = time.perf_counter()
    evaluate()
    first_s = time.perf_counter() - first
    views = data.views_per_image(protocol, config.eval_scales)
    cost = evaluation.timed(evaluate, images, views)
    scales = ",".join(map(str, config.eval_scales)) if protocol == "dense" else ""
    rows.append({"model": config.model, "protocol": protocol, "scales": scales, "views": views} | cost)
    rows[-1]["first_pass_s"] = round(first_s, 1)
  return rows


def _time_train(p_train, state, batches, steps: int, window: int, warmup: int):
  """(state after, {first step's s, start-up s, median step s, median host s per step})."""
  host_s = []  # this thread's CPU time per step: the loop's own cost, without its waits for the device

  def train_steps(n: int) -> float:
    nonlocal state
    start, host = time.perf_counter(), time.thread_time()
    for _ in range(n):
      state, metrics = p_train(state, next(batches)[0])
    host_s.append((time.thread_time() - host) / n)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  first = train_steps(1)
  startup = time.time() - psutil.Process().create_time()
  train_steps(warmup)
  host_s.clear()
  step_s = statistics.median(train_steps(window) / window for _ in range(max(1, steps // window)))
  return state, {"first_s": first, "startup_s": startup, "step_s": step_s, "host_s": statistics.median(host_s)}


def _report(config, input_kind: str, shape, macs: int, timing: dict, eval_s: float) -> dict:
  device, step_s = jax.devices()[0], timing["step_s"]
  img_per_s = config.batch_size / step_s
  peak = peak_flops(device.device_kind)
  return {
    "model": config.model,
    "input": input_kind,
    "batch": config.batch_size,
    "image": list(shape),
    "dtype": config.dtype,
    "backend": jax.default_backend(),
    "device_kind": device.device_kind,
    "devices": jax.device_count(),
    "step_ms": round(step_s * 1e3, 2),
    "host_ms_per_step": round(timing["host_s"] * 1e3, 3),
    "img_per_s": round(img_per_s, 1),
    "eval_img_per_s": round(config.batch_size / eval_s, 1),
    "compile_s": round(timing["first_s"] - step_s, 2),
    "startup_s": round(timing["startup_s"], 2),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
    "train_flops_per_image": 6 * macs,
    "mfu": round(6 * macs * img_per_s / (peak * jax.device_count()), 4) if peak else None,
  }


def render(report: dict, fmt: str) -> str:
  if fmt == "json":
    return json.dumps(report)
  width = max(map(len, report))
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in report.items())


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  config_flags.DEFINE_config_file("config", None, "Config file, as for cnnjax.main.", lock_config=True)
  flags.DEFINE_enum(
    "input", "fake", ["fake", "real"], "fake: the step alone on one device batch; real: fed by the pipeline."
  )
  flags.DEFINE_integer("steps", 20, "Timed train steps (after warm-up), in windows of --window.")
  flags.DEFINE_integer("window", 5, "Steps between host syncs while timing.")
  flags.DEFINE_enum("format", "table", ["table", "json"], "Output format.")
  flags.DEFINE_bool("compilation_cache", True, "Use the persistent compilation cache, as training does.")
  flags.DEFINE_list("protocols", [], "Time evaluation under these test protocols instead (a markdown table).")
  flags.DEFINE_integer("images", 10, "--protocols: how many test photos.")
  flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  if not FLAGS.compilation_cache:
    jax.config.update("jax_enable_compilation_cache", False)
  cli.start()
  config = config_lib.from_command_line(FLAGS["config"])
  if FLAGS.protocols:
    with tempfile.TemporaryDirectory() as folder:
      rows = protocol_costs(config, FLAGS.protocols, FLAGS.images, folder)
    print("| model | protocol | views per image | images/s | views/s | first pass (compiling) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
      protocol = f"{r['protocol']} ({r['scales']})" if r["scales"] else r["protocol"]
      line = (
        f"{r['model']} | {protocol} | {r['views']} | {r['images_per_s']} | {r['views_per_s']} | {r['first_pass_s']} s"
      )
      print(f"| {line} |")
    return
  report = run(config, FLAGS.input, FLAGS.steps, FLAGS.window)
  print(render(report, FLAGS.format))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
