"""Building models by name: the errors a user sees for bad names, options and inputs."""

import jax
import jax.numpy as jnp
import pytest

from cnnjax import complexity, models


def test_unknown_model_lists_the_valid_ones():
  with pytest.raises(ValueError) as e:
    models.create("resnet51")
  message = str(e.value)
  assert "resnet51" in message and "Did you mean" in message
  for name in ("lenet5", "alexnet", "vgg16_bn", "googlenet", "resnet152", "plain34", "resnet110"):
    assert name in message


@pytest.mark.parametrize("name", ["resnet21", "plain4", "cifar_resnet7", "vgg17"])
def test_depths_that_are_not_6n_plus_2_are_refused(name):
  with pytest.raises(ValueError, match="Valid models"):
    models.create(name)


def test_cifar_names_for_any_6n_plus_2_depth():
  # its parameters: tests/test_model_sizes.py (Table 6: 19.4M)
  assert models.create("resnet1202").stage_sizes == (200, 200, 200) and models.create("plain62").stage_sizes == (
    10,
    10,
    10,
  )
  # 50 and 152 are ImageNet ResNets; the CIFAR nets of those depths have their own names
  assert models.input_shape("resnet50") == (224, 224, 3)
  assert models.input_shape("cifar_resnet50") == (32, 32, 3)
  assert models.create("cifar_plain20").residual is False


def test_unknown_option_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown option.*shortcuts.*valid: .*shortcut"):
    models.create("resnet34", shortcuts="A")


@pytest.mark.parametrize(
  "name,option,value,valid",
  [
    ("resnet34", "shortcut", "D", "A, B, C"),
    ("resnet50", "stride_in", "v2", "v1, v1.5"),
    ("resnet20", "activation", "swishy", "relu"),
    ("resnet20", "norm", "lrn", "batchnorm, none"),
    ("alexnet", "layout", "caffe", "paper, torchvision"),
    ("googlenet", "inception", "fancy", "naive, reduced"),
    ("lenet5", "c3", "sparse", "paper, full"),
  ],
)
def test_bad_option_values_name_the_valid_ones(name, option, value, valid):
  model = models.create(name, **{option: value})
  with pytest.raises(ValueError, match=f"{value}.*{valid}"):
    complexity.count_params(model, models.input_shape(name))


def test_lenet_needs_32x32_and_ten_classes_for_its_rbf_output():
  with pytest.raises(ValueError, match="32x32"):
    complexity.count_params(models.create("lenet5"), (28, 28, 1))
  with pytest.raises(ValueError, match="head='dense'"):
    complexity.count_params(models.create("lenet5", num_classes=26), (32, 32, 1))
  assert complexity.count_params(models.create("lenet5", num_classes=26, head="dense"), (32, 32, 1)) == 60_850 + 16 * 85


def test_num_classes_sets_the_classifier():
  model = models.create("vgg11", num_classes=37, global_pool=True)
  variables = complexity.abstract_variables(model, (32, 32, 3))
  assert variables["params"]["fc8"]["kernel"].shape == (4096, 37)
  assert variables["params"]["fc6"]["kernel"].shape == (512, 4096)  # the cheap head for small inputs


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "vgg11_bn", "googlenet", "resnet18", "resnet20"])
def test_models_stay_float32_where_jax_defaults_to_float64(name):
  # JAX_ENABLE_X64=1 (float64 checks, some users' environments) makes Python floats and flax's initialisers float64
  shape = (32, 32, 1) if name == "lenet5" else (64, 64, 3)
  model = models.create(name, num_classes=10)
  with jax.enable_x64(True):
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    variables = jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=True), x
    )
    (logits, out), _ = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]),
      variables,
      x,
    )
  assert {a.dtype for a in jax.tree.leaves((variables, logits, out))} == {jnp.dtype("float32")}
