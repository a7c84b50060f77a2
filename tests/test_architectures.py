"""What parameter and multiply-add counts cannot see: dropout rates, where LRN sits, pooling windows, strides
and ceil mode. Each is checked against its paper: dropout statistically in training mode, LRN by where it is
called and by a value computed by hand, pooling by the feature-map sizes the papers' tables give."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cnnjax import complexity, models
from cnnjax.models import alexnet, layers


def random_variables(model, image_size: int, seed: int = 0) -> dict:
  """Variables of the model's shapes (auxiliary heads included), drawn at random without running its init."""
  abstract = complexity.abstract_variables(model, (image_size, image_size, 3), train=True)
  leaves, tree = jax.tree.flatten(abstract)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [jnp.asarray(rng.normal(0, 0.05, a.shape), a.dtype) for a in leaves])


def dropped_fractions(model, image_size: int, train: bool = True) -> list[tuple]:
  """[(dropout layer's path, its rate, its input's features, the fraction of non-zero inputs it zeroed, how many
  it saw)] in the order of one forward pass; a layer that drops nothing (evaluation) is not listed."""
  layers_seen = []  # (path, rate), recorded while tracing; the jitted pass returns each one's input and output

  @jax.jit
  def inputs_and_outputs(variables, x):
    pairs = []

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, layers.Dropout) and out is not args[0]:
        layers_seen.append(("/".join(context.module.path), context.module.rate))
        pairs.append((args[0], out))
      return out

    with nn.intercept_methods(record):
      model.apply(variables, x, train=train, rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
    return pairs

  x, variables = (
    jax.random.normal(jax.random.key(0), (4, image_size, image_size, 3)),
    random_variables(model, image_size),
  )
  pairs, seen = jax.device_get(inputs_and_outputs(variables, x)), []
  for (path, rate), (given, out) in zip(layers_seen, pairs, strict=True):
    live = given != 0
    seen.append((path, rate, given.shape[1:], float(np.mean(out[live] == 0)), int(live.sum())))
  return seen


@pytest.mark.parametrize(
  "name,size,expected",
  [
    # AlexNet section 4.2: "we use dropout in the first two fully-connected layers" (4096 units), probability 0.5
    ("alexnet", 67, [("", 0.5, 4096), ("", 0.5, 4096)]),
    # VGG section 3.1: "the first two fully-connected layers were regularised by dropout (dropout ratio set to 0.5)"
    ("vgg11", 32, [("", 0.5, 4096), ("", 0.5, 4096)]),
    # GoogLeNet section 5: the auxiliary heads' "dropout layer with 70% ratio of dropped outputs" after their FC
    # of 1024 units, met first (at 4a and 4d), then the main "dropout layer with 40% ratio" on the pooled 1024
    ("googlenet", 32, [("aux_4a/", 0.7, 1024), ("aux_4d/", 0.7, 1024), ("", 0.4, 1024)]),
  ],
)
def test_dropout_rates_in_training_are_the_papers_and_nothing_drops_in_evaluation(name, size, expected):
  model = models.create(name, num_classes=10)
  seen = dropped_fractions(model, size)
  assert [(path.rsplit("/", 1)[0] + "/" if "/" in path else "", rate, shape) for path, rate, shape, _, _ in seen] == [
    (where, rate, (features,)) for where, rate, features in expected
  ]
  for path, rate, _, dropped, count in seen:
    # a binomial fraction of `count` draws: within 5 standard deviations of the rate
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / count), (path, dropped, count)
  assert dropped_fractions(model, size, train=False) == []


def test_lrn_by_hand():
  """AlexNet section 3.3: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta with
  k = 2, n = 5, alpha = 1e-4, beta = 0.75, summed over the channels around i at one position."""
  a = np.arange(1.0, 8.0) * 10  # 7 channels at one pixel
  expected = [
    a[i] / (2 + 1e-4 * sum(a[j] ** 2 for j in range(max(0, i - 2), min(6, i + 2) + 1))) ** 0.75 for i in range(7)
  ]
  out = layers.local_response_norm(jnp.asarray(a, jnp.float32).reshape(1, 1, 1, 7))
  np.testing.assert_allclose(np.asarray(out).ravel(), expected, rtol=1e-6)


def test_lrn_follows_relu_of_conv1_and_conv2_only_and_precedes_their_pooling(monkeypatch):
  """Section 3.5: "Response-normalization layers follow the first and second convolutional layers. Max-pooling
  layers ... follow both response-normalization layers" (and ReLU is applied to every conv's output)."""
  model = models.create("alexnet")
  variables, calls = random_variables(model, 227), []

  def recording(x, *args, **kwargs):
    calls.append((tuple(x.shape[1:]), float(jnp.min(x))))
    return layers.local_response_norm(x, *args, **kwargs)

  monkeypatch.setattr(alexnet, "local_response_norm", recording)
  model.apply(variables, jax.random.normal(jax.random.key(0), (1, 227, 227, 3)))
  # on conv1's 55x55x96 and conv2's 27x27x256 maps: before the 3x3/2 pools that make 27 and 13 of them
  assert [shape for shape, _ in calls] == [(55, 55, 96), (27, 27, 256)]
  assert all(low >= 0 for _, low in calls)  # after the ReLU


@pytest.mark.parametrize(
  "name,sizes",
  [
    # AlexNet: 227 -> conv1 55 -> 3x3/2 overlapping pool 27 -> conv2 27 -> pool 13 -> conv3..5 13 -> pool 6
    ("alexnet", {"conv1": 27, "conv2": 13, "conv3": 13, "conv4": 13, "conv5": 6}),
    # VGG: five 2x2/2 max-pools, 224 -> 112 -> 56 -> 28 -> 14 -> 7
    ("vgg16", {"block1": 112, "block2": 56, "block3": 28, "block4": 14, "block5": 7}),
    # GoogLeNet Table 1: 3x3/2 pools in ceil mode (112 -> 56, not 55), output sizes 56, 28, 28, 14, 7
    (
      "googlenet",
      {"conv1": 56, "conv2": 28, "inception_3b": 28, "inception_4a": 14, "inception_4e": 14, "inception_5a": 7},
    ),
    # ResNet Table 1: conv1 /2 and a 3x3/2 max-pool make 56; conv3_1, conv4_1, conv5_1 halve it
    ("resnet34", {"conv1": 56, "conv2_3": 56, "conv3_1": 28, "conv4_1": 14, "conv5_3": 7}),
  ],
)
def test_feature_map_sizes_follow_the_papers_pooling_and_strides(name, sizes):
  model = models.create(name)
  (_, out), _ = complexity.abstract_init(model, models.input_shape(name))
  assert {k: out[k].shape[1] for k in sizes} == sizes
  assert all(out[k].shape[1] == out[k].shape[2] for k in sizes)


def test_ceil_mode_pooling_by_hand():
  # a 3x3/2 max-pool over 6 columns (each pixel holds its column index): floor mode has windows at 0 and 2;
  # ceil mode adds one at 4 that hangs over the edge and sees only columns 4 and 5
  x = jnp.tile(jnp.arange(6.0), (6, 1)).reshape(1, 6, 6, 1)
  np.testing.assert_array_equal(layers.max_pool(x, 3, 2, ceil_mode=True)[0, 0, :, 0], [2, 4, 5])
  np.testing.assert_array_equal(layers.max_pool(x, 3, 2)[0, 0, :, 0], [2, 4])
