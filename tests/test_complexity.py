"""The multiply-add counter against direct formulas and against XLA's own cost analysis."""

import jax
import jax.numpy as jnp
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from cnnjax import complexity

conv_configs = st.fixed_dictionaries(
  {
    "batch": st.integers(1, 3),
    "size": st.integers(5, 20),
    "groups": st.integers(1, 4),
    "in_per_group": st.integers(1, 5),
    "out_per_group": st.integers(1, 5),
    "kernel": st.integers(1, 5),
    "stride": st.integers(1, 3),
    "padding": st.integers(0, 2),
  }
)


def _conv(c, padding=None):
  p = c["padding"] if padding is None else padding
  x = jax.ShapeDtypeStruct((c["batch"], c["size"], c["size"], c["groups"] * c["in_per_group"]), jnp.float32)
  w = jax.ShapeDtypeStruct((c["kernel"], c["kernel"], c["in_per_group"], c["groups"] * c["out_per_group"]), jnp.float32)

  def f(x, w):
    return lax.conv_general_dilated(
      x,
      w,
      (c["stride"],) * 2,
      ((p, p), (p, p)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c["groups"],
    )

  return f, x, w


@settings(max_examples=40)
@given(conv_configs)
def test_conv_macs_match_the_formula(c):
  f, x, w = _conv(c)
  out = (c["size"] + 2 * c["padding"] - c["kernel"]) // c["stride"] + 1
  by_scope, depths, _ = complexity.trace(f, x, w)
  # C_out * H_out * W_out * (C_in / groups) * k^2, per example, times the batch
  expected = c["batch"] * c["groups"] * c["out_per_group"] * out * out * c["in_per_group"] * c["kernel"] ** 2
  assert sum(by_scope.values()) == expected
  assert depths == [1]


@settings(max_examples=25)
@given(conv_configs)
def test_conv_macs_agree_with_xla_cost_analysis(c):
  # XLA counts a multiply-add as 2 flops and skips taps that fall on zero padding, so compare unpadded convs
  f, x, w = _conv(c, padding=0)
  by_scope, *_ = complexity.trace(f, x, w)
  flops = jax.jit(f).lower(x, w).cost_analysis()["flops"]
  assert 2 * sum(by_scope.values()) == flops


@settings(max_examples=25)
@given(st.integers(1, 8), st.integers(1, 64), st.integers(1, 64))
def test_dense_macs_match_the_formula_and_xla(batch, fan_in, fan_out):
  x = jax.ShapeDtypeStruct((batch, fan_in), jnp.float32)
  w = jax.ShapeDtypeStruct((fan_in, fan_out), jnp.float32)
  by_scope, *_ = complexity.trace(jnp.matmul, x, w)
  assert sum(by_scope.values()) == batch * fan_in * fan_out
  assert 2 * batch * fan_in * fan_out == jax.jit(jnp.matmul).lower(x, w).cost_analysis()["flops"]


def test_depth_is_the_longest_weighted_path_through_calls_and_branches():
  w = jnp.ones((4, 4))

  @jax.jit
  def two_layers(x):  # a nested call still counts its layers
    return jnp.tanh(x @ w) @ w

  def net(x):
    shortcut = x @ w  # 1 layer, beside a 3-layer branch
    branch = two_layers(x) @ w
    return branch + shortcut, shortcut

  by_scope, depths, _ = complexity.trace(net, jax.ShapeDtypeStruct((1, 4), jnp.float32))
  assert depths == [3, 1]
  assert sum(by_scope.values()) == 4 * 16


def test_stage_names_fold_numbered_layers():
  assert [complexity.stage_of(n) for n in ("conv3_2", "conv5_x", "inception_4a", "fc8", "C3")] == [
    "conv3_x",
    "conv5_x",
    "inception_4a",
    "fc8",
    "C3",
  ]
