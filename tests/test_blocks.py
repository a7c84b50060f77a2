"""The shared blocks: option-A shortcuts, the inception cost formula, residual units, and whole-network switches."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnjax import complexity, models
from cnnjax.models.blocks import Inception, ResidualBlock, branch_layers, inception_macs, zero_pad_shortcut
from cnnjax.models.layers import BATCH_NORM
from cnnjax.models.resnet import ResNet


@settings(max_examples=15)
@given(st.integers(1, 8), st.integers(0, 8), st.sampled_from([1, 2]), st.integers(2, 9), st.integers(0, 2**31 - 1))
def test_option_a_shortcut_keeps_the_input_and_pads_zeros(channels, extra, stride, size, seed):
  x = np.random.default_rng(seed).normal(size=(2, size, size, channels)).astype(np.float32)
  y = zero_pad_shortcut(x, channels + extra, stride)
  out = -(-size // stride)
  assert y.shape == (2, out, out, channels + extra)
  np.testing.assert_array_equal(y[..., :channels], x[:, ::stride, ::stride, :])
  assert not jnp.any(y[..., channels:])


specs = st.tuples(*[st.integers(1, 12)] * 6)


@settings(max_examples=30)
@given(specs, st.sampled_from(["naive", "reduced"]), st.integers(1, 9), st.integers(1, 16), st.sampled_from([3, 5]))
def test_inception_cost_formula_matches_the_traced_module(spec, variant, size, in_channels, c5_kernel):
  module = Inception(*spec, conv=nn.Conv, norm=None, act=nn.relu, variant=variant, c5_kernel=c5_kernel)
  x = jax.ShapeDtypeStruct((1, size, size, in_channels), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  by_scope, _, out = complexity.trace(module.apply, variables, x)  # (the trace gives the output's shape too)
  assert sum(by_scope.values()) == inception_macs(size, size, in_channels, spec, variant, c5_kernel)
  c1, _, c3, _, c5, pool_proj = spec
  assert out.shape[-1] == c1 + c3 + c5 + (pool_proj if variant == "reduced" else in_channels)


def test_inception_3a_by_hand():
  # Table 1, inception (3a) on 28x28x192: 28*28*(192*(64+96+16+32) + 9*96*128 + 25*16*32) = 128.0M
  assert inception_macs(28, 28, 192, (64, 96, 128, 16, 32, 32), "reduced") == 128_049_152
  assert inception_macs(28, 28, 192, (64, 96, 128, 16, 32, 32), "naive") == 28 * 28 * 192 * (64 + 9 * 128 + 25 * 32)


def test_stride_placement():
  assert branch_layers(True, 64, 2, "v1") == [(64, 1, 2), (64, 3, 1), (256, 1, 1)]
  assert branch_layers(True, 64, 2, "v1.5") == [(64, 1, 1), (64, 3, 2), (256, 1, 1)]
  assert branch_layers(False, 64, 2, "v1") == [(64, 3, 2), (64, 3, 1)]


@pytest.mark.parametrize("bottleneck", [False, True])
def test_zero_initialised_residual_block_starts_as_the_identity(bottleneck):
  width = 4
  channels = 4 * width if bottleneck else width
  block = ResidualBlock(
    width,
    nn.Conv,
    functools.partial(BATCH_NORM, use_running_average=True),
    nn.relu,
    bottleneck=bottleneck,
    zero_init_last_norm=True,
  )
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, channels))
  variables = block.init(jax.random.key(1), x)
  np.testing.assert_allclose(block.apply(variables, x), nn.relu(x), rtol=1e-6)
  plain = block.clone(residual=False)
  assert not jnp.any(plain.apply(variables, x))  # without the shortcut nothing passes yet


def _primitive_counts(name, **options):
  model = models.create(name, **options)
  shape = models.input_shape(name)
  variables = complexity.abstract_variables(model, shape)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
  counts = {}

  def visit(jaxpr):  # relu and friends are custom_jvp calls: look inside every call
    for eqn in jaxpr.eqns:
      counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
      for sub in complexity.sub_jaxprs(eqn):
        visit(sub)

  visit(jaxpr.jaxpr)
  return counts, variables


def test_one_option_turns_a_whole_network_sigmoid():
  # ResNet-20: the stem and two per block, 1 + 9 * 2 = 19 activations
  relu, _ = _primitive_counts("resnet20")
  sigmoid, _ = _primitive_counts("resnet20", activation="sigmoid")
  assert relu.get("max") == 19 and "logistic" not in relu
  assert sigmoid.get("logistic") == 19 and "max" not in sigmoid


def test_no_norm_gives_conv_biases_and_no_running_statistics():
  _, variables = _primitive_counts("plain20", norm="none")
  assert "batch_stats" not in variables
  assert variables["params"]["conv2_1"]["conv1"]["conv"]["bias"].shape == (16,)


def test_alexnet_initialisation_follows_the_paper():
  # section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers, 0 elsewhere
  model = models.create("alexnet", num_classes=10, global_pool=True)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 67, 67, 3)))["params"]
  biases = {name: float(jnp.mean(layer.get("conv", layer)["bias"])) for name, layer in params.items()}
  assert biases == {"conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1, "fc6": 1, "fc7": 1, "fc8": 0}
  assert abs(float(jnp.std(params["conv3"]["conv"]["kernel"])) - 0.01) < 5e-4


def test_lenet_initialisation_follows_the_paper():
  # appendix A: uniform in (-2.4/F, 2.4/F), F the unit's fan-in
  params = jax.jit(models.create("lenet5").init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))["params"]
  for kernel, fan_in in (
    (params["C1"]["kernel"], 25),
    (params["C3"]["kernel_fan_in_4"], 100),
    (params["F6"]["kernel"], 120),
  ):
    assert float(jnp.max(jnp.abs(kernel))) <= 2.4 / fan_in
    assert float(jnp.max(jnp.abs(kernel))) > 2.4 / fan_in * 0.8  # it spans the range, not a narrower one


def test_zero_init_residual_option_zeroes_each_branchs_last_scale():
  # a thin, short ResNet-50 is enough
  model = models.create("resnet50", zero_init_residual=True, stage_sizes=(1, 1, 2, 1), widths=(4, 8, 16, 32))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert all(not jnp.any(params[b]["conv3"]["norm"]["scale"]) for b in params if b.startswith("conv") and "_" in b)
  assert jnp.all(params["conv2_1"]["conv2"]["norm"]["scale"] == 1)


@pytest.mark.parametrize("remat", ["norms", "blocks"])
def test_rematerialisation_changes_memory_not_the_gradients(remat):
  """A bottleneck ResNet recomputing in the backward pass gives the same gradients and BatchNorm updates."""
  kwargs = {
    "stage_sizes": (1,),
    "widths": (8,),
    "bottleneck": True,
    "num_classes": 3,
  }  # one block of each kind of layer
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = ResNet(**kwargs).init(jax.random.key(1), x, train=True)

  def grads(model):
    def loss(params):
      (logits, _), updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(logits**2), updates

    return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

  jaxpr = lambda model: str(jax.make_jaxpr(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables))
  assert "remat" in jaxpr(ResNet(**kwargs, remat=remat)) and "remat" not in jaxpr(ResNet(**kwargs))
  (g, stats), (g_remat, stats_remat) = grads(ResNet(**kwargs)), grads(ResNet(**kwargs, remat=remat))
  assert jax.tree.structure(g) == jax.tree.structure(g_remat)
  for a, b in zip(jax.tree.leaves((g, stats)), jax.tree.leaves((g_remat, stats_remat))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="valid: none, norms, blocks"):
    ResNet(**kwargs, remat="all").init(jax.random.key(1), x, train=True)
