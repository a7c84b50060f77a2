"""Gradient flow: the lecture's 0.01^n argument as properties, and `python -m cnnjax.gradflow` end to end."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnjax import complexity, gradflow, models
from cnnjax.models import blocks, layers

from helpers import load_config


@settings(max_examples=15)
@given(st.integers(1, 8), st.floats(-3, 3), st.floats(0.1, 2.0))
def test_sigmoid_units_shrink_the_gradient_below_a_quarter_each_and_identity_shortcuts_do_not(n, x, w):
  """The lecture's 0.01^n argument on the project's own blocks, one channel at one pixel, every weight w:
  through n sigmoid conv units the gradient is a product of n factors w * sigma' <= w / 4; through n
  pre-activation residual blocks (x + F(x), F's weights positive) each factor is 1 + (something >= 0)."""
  sigmoid = layers.activation("sigmoid")
  conv = functools.partial(nn.Conv, kernel_init=nn.initializers.constant(w), bias_init=nn.initializers.zeros)
  plain = nn.Sequential([blocks.ConvUnit(1, 1, conv, act=sigmoid) for _ in range(n)])
  residual = nn.Sequential([blocks.ResidualBlock(1, conv, None, sigmoid, preactivation=True) for _ in range(n)])
  x = jnp.full((1, 1, 1, 1), x, jnp.float32)

  def gradient(model):
    variables = model.init(jax.random.key(0), x)
    return float(jax.grad(lambda x: model.apply(variables, x).sum())(x).sum())

  assert 0 < gradient(plain) <= (w / 4) ** n * (1 + 1e-4)
  assert gradient(residual) >= 1 - 1e-6


def test_preactivation_resnet20_has_the_same_parameters():
  # moving BatchNorm before each conv: -32 (stem) -32 -64 (first blocks of stages 2 and 3) +128 (final norm)
  assert complexity.count_params(models.create("resnet20", preactivation=True), (32, 32, 3)) == 269_722
  # option B without the projections' BatchNorm (BN(32) + BN(64)): 272,474 - 192
  assert complexity.count_params(models.create("resnet20", preactivation=True, shortcut="B"), (32, 32, 3)) == 272_282


def test_preactivation_with_zero_init_is_refused():
  with pytest.raises(ValueError, match="post-activation"):
    complexity.count_params(models.create("resnet20", preactivation=True, zero_init_residual=True), (32, 32, 3))


def _gradflow(tfds_dir, tmp_path, depth, *, steps=(0,), **options):
  config = load_config("cifar_resnet", f"{depth},local", data_dir=tfds_dir, batch_size=32)
  config.model_options.update(options)
  return gradflow.run(config, str(tmp_path), list(steps))


def test_sigmoid_plain_net_loses_its_gradient_and_preactivation_keeps_it(tfds_dir, tmp_path):
  plain = _gradflow(tfds_dir, tmp_path / "plain", "14,plain", activation="sigmoid", norm="none")
  layers = plain["layers"]
  assert [layer["depth"] for layer in layers] == list(range(1, 15)) and layers[-1]["name"] == "fc"
  assert layers[0]["grad_norm"] < 1e-4 * layers[-2]["grad_norm"]  # geometric decay over 13 sigmoid layers
  pre = _gradflow(tfds_dir, tmp_path / "pre", "14", activation="sigmoid", norm="none", preactivation=True)
  assert pre["layers"][0]["grad_norm"] > 1e-2 * pre["layers"][-2]["grad_norm"]
  report = json.loads((tmp_path / "pre" / "gradflow.json").read_text())
  assert report["layers"] == pre["layers"] and (tmp_path / "pre" / "gradflow.png").exists()


def test_layers_come_in_the_order_they_run_not_in_name_order():
  # JAX hands parameter dicts back sorted by name: conv2_10 before conv2_2, GoogLeNet's fc before inception_3a
  for name, shape, before, after in [
    ("cifar_resnet62", (16, 16, 3), "conv2_2/conv1/conv", "conv2_10/conv1/conv"),
    ("googlenet", (32, 32, 3), "conv2_reduce/conv", "conv2/conv"),
  ]:
    model = models.create(name, num_classes=10)
    images = jnp.zeros((1, *shape))
    variables = jax.eval_shape(lambda m=model, x=images: m.init({"params": jax.random.key(0)}, x, train=True))
    layers = gradflow.weighted_layers(variables["params"])
    names = [layers[i][1] for i in gradflow.forward_order(model, variables, images)]
    assert names[0] == "conv1/conv" and names[-1] == "fc" and names.index(before) < names.index(after)


def test_measures_at_each_requested_step(tfds_dir, tmp_path):
  report = _gradflow(tfds_dir, tmp_path, "8", steps=(0, 3))
  assert [r["step"] for r in report["steps"]] == [0, 3]
  assert report["steps"][0]["layers"] == report["layers"]
  before, after = (np.array([layer["grad_norm"] for layer in r["layers"]]) for r in report["steps"])
  assert np.all(np.isfinite(after)) and not np.allclose(before, after)
  names = [a["name"] for a in report["steps"][0]["activations"]]
  assert names[0] == "conv1" and "pre_logits" in names


def test_the_figures_title_names_only_the_options_that_change_the_network(tmp_path, drawn):
  """The plain-20 figure once listed every option of the config, shortcut=A of a net without shortcuts among them."""
  options = {**models.defaults("plain20"), "activation": "sigmoid", "norm": "none"}
  layers = [{"depth": 1, "grad_norm": 1e-3}, {"depth": 2, "grad_norm": 0.3}]
  report = {"model": "plain20", "model_options": options, "steps": [{"step": 0, "layers": layers}]}
  gradflow.plot(report, tmp_path / "gradflow.png")
  assert drawn[0].get_title() == "plain20: activation=sigmoid, norm=none"
