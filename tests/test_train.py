"""The train step, schedules and the loop, on 8 simulated CPU devices and the bundled digits dataset."""

import contextlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import checkpoint, data, devices, errors, evaluation, optim, train
from cnnjax import config as config_lib

from helpers import load_config


def run_steps(config, local_devices, steps: int):
  """`steps` pmapped train steps on the first batches of the digits stream, over `local_devices`."""
  run = train.build(config)
  layout = data.Layout(config.batch_size, len(local_devices))
  mesh = devices.device_mesh(local_devices)
  p_train, p_eval = train.pmapped_steps(run.step_config, local_devices)
  state = devices.replicate(train.initial_state(run), mesh)
  history = []
  with (
    data.reading(data.train_batches(run.dataset, train.input_shape(config), layout, 0)) as stream,
    contextlib.closing(devices.prefetch_to_device(stream, mesh)) as batches,
  ):
    for batch, _ in itertools.islice(batches, steps):
      state, metrics = p_train(state, batch)
      history.append(jax.device_get(metrics))
  return state, history, run, p_eval


FAMILIES = [
  ("lenet5", "", {}),
  ("alexnet", "local", {"model_options": {"fc_width": 32}}),
  ("vgg", "11,local", {"model_options": {"widths": (8, 8, 16, 16, 16), "fc_width": 32}}),
  ("resnet", "18,local", {"model_options": {"widths": (8, 8, 16, 16)}}),
  ("resnet", "50,local", {"model_options": {"widths": (4, 4, 8, 8), "stage_sizes": (1, 1, 1, 1)}, "dtype": "bfloat16"}),
  ("cifar_resnet", "20,local", {"model_options": {"widths": (4, 8, 16)}}),
]  # GoogLeNet trains, with and without its auxiliary heads, in tests/test_experiments.py


@pytest.mark.parametrize("name,arg,overrides", FAMILIES, ids=[f"{n}:{a}" for n, a, _ in FAMILIES])
def test_every_family_trains(name, arg, overrides, tfds_dir):
  # no weight decay: then SGD's momentum trace is the sum of the two steps' gradients, which must reach every
  # parameter (whether a parameter *moved* says less: an update below its float32 resolution leaves it as it was)
  config = load_config(
    name,
    arg,
    data_dir=tfds_dir,
    batch_size=16,
    weight_decay=0.0,
    **{k: v for k, v in overrides.items() if k != "model_options"},
  )
  config.model_options.update(overrides.get("model_options", {}))
  state, history, run, p_eval = run_steps(config, jax.local_devices(), 2)
  assert all(np.isfinite(m["loss"]) for m in history)
  gradient = optax.tree_utils.tree_get(state.opt_state, "trace")
  assert jax.tree.structure(gradient) == jax.tree.structure(state.params)
  without = [
    jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(gradient) if not np.any(np.asarray(g))
  ]
  assert not without, f"parameters without a gradient: {without}"
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))  # fp32 master weights in bf16 runs
  assert np.isfinite(evaluation.evaluate_state(p_eval, state, run)["eval_loss"])


def tiny_vgg(tfds_dir, dtype: str):
  """VGG-11 with BatchNorm, thin, on 16x16 digits: BatchNorm statistics and dropout masks in a few steps."""
  config = load_config("vgg", "11,bn,local", data_dir=tfds_dir, batch_size=32, image_size=16, dtype=dtype)
  config.model_options.update(widths=(4, 4, 8, 8, 8), fc_width=16)
  return config


def test_one_device_and_eight_devices_agree(tfds_dir):
  """BatchNorm statistics synchronised over the devices, gradients averaged, dropout masks drawn for the global
  batch (models.layers.Dropout): how the batch is split must not change the result, dropout included.

  In float64 the two runs differ by summation order alone: entries of a state of scale 1 agree to 1e-12 (here
  they agree to a few float64 ulps, 4e-16 to 8e-15 as XLA emits its loops); a bug (a device's statistics, gradient
  or mask not shared) moves them by far more than that. The learning rate is constant: optax's schedules compute in
  float32 (from an int32 step count) also in float64 runs, and that rounding, which the compiler may fuse
  differently into the two programs, moved the parameters by up to 1e-9. In float32, BatchNorm over few values per
  channel amplifies rounding so much that the runs' distance to the exact result is itself about 2e-3, on one
  device as on eight: the check there is that eight devices land no farther from the float64 result than one
  device does.
  """
  state = {}
  for dtype, count in (("float64", 1), ("float64", 8), ("float32", 1), ("float32", 8)):
    with jax.enable_x64(dtype == "float64"):
      config = tiny_vgg(tfds_dir, dtype)
      config.update(schedule="constant", warmup_epochs=0)
      final, _, _, _ = run_steps(config, jax.local_devices()[:count], 3)
      state[dtype, count] = [np.asarray(a, np.float64) for a in jax.tree.leaves((final.params, final.batch_stats))]
      assert all(a.dtype == np.dtype(dtype) for a in jax.tree.leaves(final.params))
  exact = state["float64", 1]
  assert max(np.max(np.abs(a)) for a in exact) > 0.5  # the scale the bounds are relative to
  for a, b in zip(exact, state["float64", 8]):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
  distance = lambda run: np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(exact, run)))
  assert distance(state["float32", 8]) <= 2 * distance(state["float32", 1]) + 1e-6


def test_dropout_masks_differ_across_devices_and_steps_and_follow_the_global_batch():
  from cnnjax.models.layers import Dropout

  layer = Dropout(0.5, axis_name="batch")
  x = jnp.ones((8, 4, 64))  # 8 devices, 4 examples each

  def masks(key):
    return jax.pmap(lambda x: layer.apply({}, x, deterministic=False, rngs={"dropout": key}), "batch")(x) != 0

  step0, step1 = masks(jax.random.key(0)), masks(jax.random.key(1))
  assert not np.array_equal(step0[0], step0[1]) and not np.array_equal(step0, step1)
  whole = Dropout(0.5).apply({}, jnp.ones((32, 64)), deterministic=False, rngs={"dropout": jax.random.key(0)}) != 0
  np.testing.assert_array_equal(np.asarray(step0).reshape(32, 64), whole)  # the rows of one global mask
  assert 0.4 < float(np.mean(whole)) < 0.6


def test_train_step_is_traced_once_and_donates_the_state(tfds_dir, monkeypatch):
  traces = []
  original = train.train_step

  def counting(*args, **kwargs):
    traces.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(train, "train_step", counting)
  config = load_config("lenet5", data_dir=tfds_dir, batch_size=16)
  run = train.build(config)
  mesh = devices.device_mesh()
  p_train, _ = train.pmapped_steps(run.step_config)
  state = devices.replicate(train.initial_state(run), mesh)
  stream = devices.prefetch_to_device(iter(data.train_batches(run.dataset, (32, 32, 1), run.layout, 0)), mesh)
  for batch, _ in itertools.islice(stream, 4):
    previous = state
    state, _ = p_train(state, batch)
  assert len(traces) == 1
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous.params))  # donated: updated in place


def test_learning_rate_schedules_by_hand():
  cifar = load_config("cifar_resnet", "110")  # 0.01 warm-up for 400 steps, then 0.1, /10 at 32k and 48k
  lr = optim.schedule(cifar, steps_per_epoch=390)
  assert [float(lr(s)) for s in (0, 399, 400, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
    [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  )
  googlenet = load_config("googlenet")  # 4% less every 8 epochs
  lr = optim.schedule(googlenet, steps_per_epoch=100)
  assert [float(lr(s)) for s in (0, 799, 800, 1600)] == pytest.approx([0.08, 0.08, 0.08 * 0.96, 0.08 * 0.96**2])
  googlenet.update(warmup_steps=50, warmup_type="constant", warmup_lr=0.008)  # decays still every 800 steps from 0
  lr = optim.schedule(googlenet, steps_per_epoch=100)
  assert [float(lr(s)) for s in (49, 50, 799, 800)] == pytest.approx([0.008, 0.08, 0.08, 0.08 * 0.96])
  resnet = load_config("resnet", "50")
  lr = optim.schedule(resnet, steps_per_epoch=10)
  assert [float(lr(s)) for s in (0, 299, 300, 600)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
  local = load_config("resnet", "18,local")  # linear warm-up over one epoch, then cosine to zero
  lr = optim.schedule(local, steps_per_epoch=10)
  total = optim.total_steps(local, 10)
  assert [float(lr(s)) for s in (0, 5, 10, total)] == pytest.approx([0.0, 0.025, 0.05, 0.0], abs=1e-7)


def test_cross_entropy_with_label_smoothing_by_hand():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  assert float(train.cross_entropy(logits, jnp.array([0]))) == pytest.approx(-np.log(0.5))
  # smoothing 0.3 over 3 classes: targets (0.8, 0.1, 0.1)
  expected = -(0.8 * np.log(0.5) + 0.1 * np.log(0.25) + 0.1 * np.log(0.25))
  assert float(train.cross_entropy(logits, jnp.array([0]), 0.3)) == pytest.approx(expected)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tfds_dir, tmp_path, capsys):
  config = load_config(
    "lenet5",
    data_dir=tfds_dir,
    batch_size=16,
    num_steps=40,
    checkpoint_every_steps=5,
    log_every_steps=5,
    eval_every_steps=1000,
    schedule="step",
    lr_decay_steps=(10,),
    lr_decay_factor=1e7,
  )  # sane for 10 steps, then a rate that blows up
  config.model_options.update(activation="relu", head="dense")  # unbounded, so the blow-up reaches inf / NaN
  with pytest.raises(errors.TrainingDiverged, match=r"at step (1[1-9]|[2-4]\d)"):
    train.train_and_evaluate(config, str(tmp_path))
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and max(steps) <= 15
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  state, _ = ckpt.restore_latest(lambda: train.initial_state(train.build(config)))
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(state.params))
  ckpt.close()


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tfds_dir, tmp_path, capsys):
  config = load_config(
    "lenet5",
    data_dir=tfds_dir,
    batch_size=16,
    num_steps=20,
    checkpoint_every_steps=10,
    log_every_steps=10,
    eval_every_steps=1000,
  )
  train.train_and_evaluate(config, str(tmp_path))
  for f in (tmp_path / "checkpoints" / "20" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\0" * 7)
  capsys.readouterr()
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  state, data_state = ckpt.restore_latest(lambda: train.initial_state(train.build(config)))
  assert int(state.step) == 10 and data_state == {"next_index": 10}
  assert "skipped unreadable checkpoint(s) step 20" in capsys.readouterr().out
  ckpt.close()


def test_a_relative_workdir_works(tfds_dir, tmp_path, monkeypatch):
  # the default workdir is runs/NAME-TIME, relative to where the command runs
  monkeypatch.chdir(tmp_path)
  config = load_config(
    "lenet5", data_dir=tfds_dir, batch_size=16, num_steps=2, log_every_steps=1, eval_every_steps=1000
  )
  assert train.train_and_evaluate(config, "runs/relative")["final_step"] == 2
  assert (tmp_path / "runs" / "relative" / "checkpoints" / "2" / "state").is_dir()


def test_a_workdir_of_another_model_is_refused(tfds_dir, tmp_path):
  config = load_config(
    "lenet5", data_dir=tfds_dir, batch_size=16, num_steps=2, log_every_steps=1, eval_every_steps=1000
  )
  train.train_and_evaluate(config, str(tmp_path))
  other = load_config("lenet5", data_dir=tfds_dir, batch_size=16, num_steps=2)
  other.model_options.head = "dense"
  with pytest.raises(checkpoint.CheckpointError, match="holds checkpoints of another model"):
    train.train_and_evaluate(other, str(tmp_path))
  longer = load_config(
    "lenet5", data_dir=tfds_dir, batch_size=16, num_steps=4, log_every_steps=1, eval_every_steps=1000
  )
  assert train.train_and_evaluate(longer, str(tmp_path))["final_step"] == 4  # same model, longer schedule: resumes


class _Numbered:
  """Batches 0, 1, 2, ... of shape [8, 1] (one row per simulated device); state = batches handed out; fails at
  `fail_at`."""

  def __init__(self, fail_at: int | None = None, length: int | None = None):
    self.position, self.fail_at, self.length = 0, fail_at, length

  def __next__(self):
    if self.position == self.fail_at:
      raise data.DatasetError(f"cannot decode batch {self.position}")
    if self.position == self.length:
      raise StopIteration
    self.position += 1
    return np.full((8, 1), self.position - 1, np.float32)

  def get_state(self):
    return {"position": self.position}


def test_prefetch_pairs_each_batch_with_the_state_after_it_and_raises_pipeline_errors_in_order():
  mesh = devices.device_mesh()
  stream = devices.prefetch_to_device(_Numbered(fail_at=5), mesh, size=2)
  for i in range(5):
    batch, state = next(stream)
    assert float(batch[0, 0]) == i and state == {"position": i + 1}
  with pytest.raises(data.DatasetError, match="cannot decode batch 5"):
    next(stream)
  assert [int(b[0, 0]) for b, _ in devices.prefetch_to_device(_Numbered(length=3), mesh)] == [
    0,
    1,
    2,
  ]  # a finite stream ends
  early = devices.prefetch_to_device(_Numbered(), mesh)
  next(early)
  early.close()  # a loop that stops early: the reading thread ends (close() joins it) instead of blocking forever


@pytest.mark.parametrize("classes", [20, 10])
def test_top5_beyond_ten_classes_is_the_share_of_labels_among_the_five_largest_logits(classes):
  """eval_top5 (reported when a dataset has more than 10 classes) against a hand count. The 'model' reads its
  logits off the image's first row, so every logit is known; 37 examples leave a padded, masked last batch."""
  from flax import linen as nn

  class LogitsInTheImage(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return x[:, 0, :classes, 0], {}

  rng = np.random.default_rng(0)
  n = 37
  images = np.zeros((n, classes, classes, 1), np.uint8)
  images[:, 0, :, 0] = [rng.permutation(classes) * 12 for _ in range(n)]  # distinct logits: no ties to break
  labels = rng.integers(0, classes, n)
  source = data.sources.ArraySource(images, labels)
  dataset = data.Dataset("logits", source, source, classes, data.sources.Spec("small", ((0.0,), (1.0,))))
  model = LogitsInTheImage()
  step_config = train.StepConfig(model=model, learning_rate_fn=lambda step: 0.0, mean=(0.0,), std=(1.0,))
  config = config_lib.base()
  config.image_size, config.channels, config.workers = classes, 1, 0
  layout = data.Layout(16, jax.local_device_count())
  run = train.Run(config, dataset, layout, steps_per_epoch=1, step_config=step_config, optimizer=optax.sgd(0.0))
  state = train.TrainState.create(apply_fn=model.apply, params={}, batch_stats={}, tx=optax.sgd(0.0))
  result = evaluation.evaluate_state(train.pmapped_steps(step_config)[1], state, run)

  logits = images[:, 0, :, 0].astype(int)
  assert result["eval_accuracy"] == sum(np.argmax(logits[i]) == labels[i] for i in range(n)) / n
  if classes > 10:
    top5 = sum(labels[i] in sorted(range(classes), key=lambda c: -logits[i, c])[:5] for i in range(n))
    assert 0 < top5 < n and result["eval_top5"] == top5 / n
  else:
    assert "eval_top5" not in result


def test_every_auxiliary_output_of_any_model_joins_the_loss_with_its_weight():
  """The loss reads the auxiliary classifiers from what a model returns (intermediates named aux_*), not from one
  model's layer names: a toy model's head `aux_early` is weighted by aux_loss_weight, its other outputs are not."""
  import flax.linen as nn

  class TwoHeads(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      logits = nn.Dense(3, name="fc")(x.reshape(len(x), -1))
      return logits, {"aux_early": 2.0 * logits, "pre_logits": 5.0 * logits}

  model, images, labels = TwoHeads(), jnp.ones((2, 2, 2, 1)), jnp.array([0, 2])
  params = model.init(jax.random.key(0), images)["params"]
  state = train.TrainState.create(apply_fn=model.apply, params=params, batch_stats={}, tx=optax.sgd(0.1))
  step_config = train.StepConfig(
    model=model, learning_rate_fn=lambda step: 0.1, mean=(0.0,), std=(1.0,), aux_loss_weight=0.25
  )
  objective, (loss, logits, _, _) = train.loss_fn(params, state, images, labels, step_config, jax.random.key(1))

  def by_hand(z):  # mean softmax cross-entropy
    z = np.asarray(z, np.float64)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.mean(log_p[np.arange(2), np.asarray(labels)])

  assert float(loss) == pytest.approx(by_hand(logits), rel=1e-5)
  assert float(objective) == pytest.approx(by_hand(logits) + 0.25 * by_hand(2.0 * np.asarray(logits)), rel=1e-5)
