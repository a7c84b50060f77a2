"""Every model against the papers' and torchvision's exact figures (docs/reference.md, sections 1-6).

All counts come from traced shapes (jax.eval_shape / make_jaxpr): nothing here runs a big model.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from cnnjax import complexity, models

from paper_counts import MACS, PARAMS


@functools.cache
def cost(name, train=False, **options):
  return complexity.cost(models.create(name, **options), models.input_shape(name), train)


@pytest.mark.parametrize("name", sorted(set(PARAMS) | set(models.names()), key=lambda n: (n not in PARAMS, n)))
def test_parameter_count_and_output_at_the_paper_input(name):
  model = models.create(name)  # with its paper's classes: 1000, or 10 for LeNet-5 and the CIFAR nets
  (logits, out), variables = complexity.abstract_init(model, models.input_shape(name), batch=2)
  if name in PARAMS:
    assert complexity.size(variables["params"]) == PARAMS[name]
  assert logits.shape == (2, model.num_classes) and "pre_logits" in out


def test_every_registered_model_has_its_count_checked():
  unchecked = [n for n in models.names() if n not in PARAMS and not n.startswith("plain")]
  assert unchecked == []


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_plain_twin_has_the_resnets_parameters(depth):
  # "our residual models have exactly the same depth, width, and number of parameters as the plain counterparts"
  assert cost(f"plain{depth}").params == PARAMS[f"resnet{depth}"]


def test_imagenet_plain_twins_equal_option_a_resnets():
  for depth in (18, 34):
    assert cost(f"plain{depth}").params == cost(f"resnet{depth}", shortcut="A").params


@pytest.mark.parametrize(
  "name,options,params",
  [
    ("resnet18", {"shortcut": "C"}, 12_043_816),  # docs/reference.md, section 5: projection on all 16 shortcuts
    ("resnet34", {"shortcut": "C"}, 22_716_840),
    ("resnet20", {"shortcut": "B"}, 272_474),  # docs/reference.md, section 6: option B on CIFAR
    ("resnet56", {"shortcut": "B"}, 855_770),
    ("googlenet", {"norm": "batchnorm"}, 7_005_832),  # paper structure, BN instead of bias
    ("lenet5", {"c3": "full", "subsampling": "max", "head": "dense"}, 61_706),  # the common re-implementation
    ("lenet5", {"c3": "full", "head": "dense"}, 61_750),
    ("lenet5", {"head": "dense"}, 60_850),
    ("alexnet", {"norm": "batchnorm"}, 60_965_224 + 2 * (96 + 256 + 384 + 384 + 256)),
  ],
)
def test_named_options_have_their_own_exact_counts(name, options, params):
  assert cost(name, **options).params == params


def test_googlenet_auxiliary_heads_exist_in_training_only():
  assert cost("googlenet", train=True).params == 13_378_280
  assert cost("googlenet_torchvision", train=True).params == 13_004_888
  model = models.create("googlenet", num_classes=10)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  (logits, out), variables = complexity.abstract_init(model, (64, 64, 3), train=True, batch=2)
  assert {"aux_4a", "aux_4d"} <= set(out) and out["aux_4a"].shape == logits.shape == (2, 10)
  _, out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert not any(k.startswith("aux") for k in out)
  assert cost("googlenet", aux_heads=False, train=True).params == 6_998_552


@pytest.mark.parametrize("name", MACS)
def test_multiply_adds(name):
  assert cost(name).macs == MACS[name]


@pytest.mark.parametrize(
  "name,options,macs",
  [
    ("resnet50", {"stride_in": "v1.5"}, 4_089_184_256),  # torchvision's 4.089 "GFLOPS"
    ("resnet34", {"shortcut": "A"}, 3_644_493_824),
    ("resnet34", {"shortcut": "C"}, 3_830_747_136),
    ("vgg16_bn", {}, 15_470_264_320),  # BatchNorm is not counted
    ("lenet5", {"c3": "full", "head": "dense"}, 416_520),
  ],
)
def test_multiply_adds_of_variants(name, options, macs):
  assert cost(name, **options).macs == macs


@pytest.mark.parametrize("name,gmacs", [("resnet101", 7.801), ("resnet152", 11.514), ("resnet18", 1.814)])
def test_torchvision_ops_rounded(name, gmacs):
  # torchvision publishes these only rounded to three decimals of a billion
  assert round(cost(name, stride_in="v1.5").macs / 1e9, 3) == gmacs


def test_the_lecture_cost_comparison():
  # ResNet paper section 3.3: "3.6 billion FLOPs (multiply-adds), which is only 18% of VGG-19 (19.6 billion FLOPs)"
  vgg19, plain34 = cost("vgg19").macs, cost("plain34").macs
  assert round(vgg19 / 1e9, 1) == 19.6 and round(plain34 / 1e9, 1) == 3.6
  assert vgg19 / plain34 > 5 and round(plain34 / vgg19, 2) == 0.19  # "only 18%" rounds 3.64/19.63 down


@pytest.mark.parametrize(
  "name,depth",
  [
    ("lenet5", 5),
    ("alexnet", 8),
    ("vgg16", 16),
    ("vgg19_bn", 19),
    ("googlenet", 22),
    ("resnet34", 34),
    ("plain34", 34),
    ("resnet152", 152),
    ("resnet56", 56),
    ("plain110", 110),
  ],
)
def test_depth_counts_weighted_layers_on_the_longest_path(name, depth):
  # AlexNet "eight learned layers"; GoogLeNet "22 layers deep when counting only layers with parameters"
  assert cost(name).depth == depth


def _logits_shape(name, input_shape, num_classes):
  (logits, out), _ = complexity.abstract_init(models.create(name, num_classes=num_classes), input_shape, batch=2)
  assert "pre_logits" in out
  return logits.shape


IMAGENET_NAMES = [n for n in models.names() if models.input_shape(n) == (224, 224, 3) or n.startswith("alexnet")]


@pytest.mark.parametrize(
  "name,size",
  [(n, 32) for n in IMAGENET_NAMES]
  + [("alexnet", 64), ("alexnet_torchvision", 64), ("googlenet", 64), ("googlenet_torchvision", 64)],
)
def test_imagenet_networks_run_on_small_inputs(name, size):
  # 32: pools whose window exceeds the map keep one output, adaptive pools replicate; 64: torchvision AlexNet's
  # smallest input is 63, and GoogLeNet's auxiliary heads see 4x4 maps (their pool is the identity there)
  assert _logits_shape(name, (size, size, 3), 10) == (2, 10)


def test_small_inputs_keep_the_classifier_of_the_paper():
  # an adaptive pool onto the paper's grid keeps fc6 at 9216 (AlexNet) / 25088 (VGG) inputs
  for name in ("alexnet", "vgg16"):
    assert complexity.count_params(models.create(name), (32, 32, 3)) == PARAMS[name]
