"""cnnjax.diagram and cnnjax.draw: the figures' data against the papers' tables (not pixels), and the files the
command writes."""

import json
import subprocess
import sys

import pytest

from cnnjax.diagram import figure_data, totals

from helpers import ROOT


def test_fig3_columns_have_the_papers_layers_and_shortcuts():
  # ResNet paper Fig. 3 / Table 1: VGG-19 has 16 conv and 3 fc layers; the 34-layer nets 33 conv and 1 fc, the
  # residual one 16 shortcuts of which 3 (dotted) increase dimensions, the plain one none
  vgg, plain, resnet = (figure_data(n) for n in ("vgg19", "plain34", "resnet34"))
  assert totals(vgg) == {"conv": 16, "fc": 3, "pool": 5}
  assert totals(plain) == {"conv": 33, "fc": 1, "pool": 2}
  assert totals(resnet) == {"conv": 33, "fc": 1, "pool": 2, "shortcut:identity": 13, "shortcut:projection": 3}
  labels = [b["label"] for b in resnet["boxes"]]
  assert labels[:3] == ["7x7 conv, 64, /2", "pool, /2", "3x3 conv, 64"] and labels[-2:] == ["avg pool", "fc 1000"]
  assert labels.count("3x3 conv, 128, /2") == 1 and labels.count("3x3 conv, 512") == 5
  # the output sizes down the column: 112, 56, 28, 14, 7, then vectors
  assert list(dict.fromkeys(b["stage"] for b in resnet["boxes"])) == [
    "112x112",
    "56x56",
    "28x28",
    "14x14",
    "7x7",
    "vector",
  ]
  # every shortcut spans one block's two convolutions, and the dotted ones start the stages conv3_x..conv5_x
  dotted = [s for s in resnet["shortcuts"] if s["kind"] != "identity"]
  assert all(s["to"] - s["from"] == 1 for s in resnet["shortcuts"])
  assert [labels[s["from"]] for s in dotted] == ["3x3 conv, 128, /2", "3x3 conv, 256, /2", "3x3 conv, 512, /2"]
  assert round(vgg["macs"] / 1e9, 1) == 19.6 and round(plain["macs"] / 1e9, 1) == 3.6  # Fig. 3's FLOPs


def test_options_and_cifar_nets_get_their_own_shortcuts():
  # CIFAR ResNet-20 (section 4.2): 19 conv + fc, option A: the two stage changes zero-pad, the other 7 are identities
  assert totals(figure_data("resnet20")) == {
    "conv": 19,
    "fc": 1,
    "pool": 1,
    "shortcut:identity": 7,
    "shortcut:zero_pad": 2,
  }
  assert totals(figure_data("resnet20", shortcut="C")) == {"conv": 19, "fc": 1, "pool": 1, "shortcut:projection": 9}
  assert "shortcut:identity" not in totals(figure_data("plain56"))


def test_deep_nets_fold_identical_blocks_and_keep_their_totals():
  # ResNet-152: "152 layers" = 151 convolutions + fc; conv2_x..conv5_x have 3, 8, 36, 3 bottleneck blocks
  folded = figure_data("resnet152")
  assert totals(folded) == {"conv": 151, "fc": 1, "pool": 2, "shortcut:identity": 46, "shortcut:projection": 4}
  assert sorted(s["count"] for s in folded["shortcuts"]) == [1, 1, 1, 1, 2, 2, 7, 35] and len(folded["boxes"]) < 40
  assert totals(figure_data("resnet152", fold=False)) == totals(folded)
  # CIFAR ResNet-110: 3 stages of 18 blocks; the first of stages 2 and 3 zero-pads, so it stands alone
  cifar = figure_data("resnet110", fold=True)
  assert totals(cifar) == {"conv": 109, "fc": 1, "pool": 1, "shortcut:identity": 52, "shortcut:zero_pad": 2}
  assert [s["count"] for s in cifar["shortcuts"]] == [18, 1, 17, 1, 17]


def test_googlenet_lenet_and_alexnet_are_drawn_as_their_papers_name_them():
  googlenet = figure_data("googlenet")
  # Fig. 3's column: 3 convolutions, 5 pools, 2 LocalRespNorm, 9 inception modules, 2 auxiliary heads, 1 fc
  assert totals(googlenet) == {"conv": 3, "pool": 5, "norm": 2, "inception": 9, "aux": 2, "fc": 1}
  labels = [b["label"] for b in googlenet["boxes"]]
  assert labels.index("auxiliary classifier, fc 1000") == labels.index("inception 4a, 512") + 1  # the heads read 4a, 4d
  assert "inception 5b, 1024" in labels  # Table 1's output channels
  lenet = [b["label"] for b in figure_data("lenet5")["boxes"]]
  assert [label.split(":")[0] for label in lenet[:6]] == ["C1", "S2", "C3", "S4", "C5", "F6"] and lenet[-1] == "RBF 10"
  alexnet = [b["label"] for b in figure_data("alexnet")["boxes"]]  # the two towers: conv2, conv4, conv5 in 2 groups
  assert [label for label in alexnet if "groups" in label] == [
    "5x5 conv, 256, 2 groups",
    "3x3 conv, 384, 2 groups",
    "3x3 conv, 256, 2 groups",
  ]


@pytest.mark.parametrize("out", ["fig.png", "fig.svg", "fig.json"])
def test_the_command_writes_each_format(tmp_path, out):
  result = subprocess.run(
    [sys.executable, "-m", "cnnjax.draw", "--model=resnet20,plain20", f"--out={tmp_path / out}"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  written = (tmp_path / out).read_bytes()
  if out.endswith(".json"):
    models = json.loads(written)["models"]
    assert [m["name"] for m in models] == ["resnet20", "plain20"]
    assert set(models[0]["boxes"][0]) >= {"label", "kind", "stage", "output_shape", "count"}
    assert set(models[0]["shortcuts"][0]) >= {"from", "to", "kind", "count"}
  else:
    assert written[:4] == b"\x89PNG" if out.endswith(".png") else b"<svg" in written[:400]


@pytest.mark.parametrize("name", ["googlenet", "resnet50", "alexnet_torchvision", "lenet5"])
def test_the_cost_under_each_column_is_the_inference_cost(name):
  # the exact multiply-adds and parameters docs/reference.md gives (tests/test_model_sizes.py's tables): the
  # auxiliary heads, drawn beside GoogLeNet, are not counted, as at inference
  from paper_counts import MACS, PARAMS

  data = figure_data(name)
  assert (data["macs"], data["params"]) == (MACS[name], PARAMS[name])


def test_the_inception_module_naive_and_reduced_with_each_branchs_cost():
  from cnnjax.diagram import block_panels

  naive, reduced = block_panels("googlenet", "inception_3a")
  # by hand, on 3a's 28x28x192 input (Table 1: 64 | 96 -> 128 | 16 -> 32 | pool -> 32), per output pixel:
  # naive 192 * (64 + 9*128 + 25*32); reduced 192 * (64 + 96 + 16 + 32) + 9*96*128 + 25*16*32
  assert naive["macs"] == 28 * 28 * 192 * (64 + 9 * 128 + 25 * 32) == 303_464_448
  assert reduced["macs"] == 28 * 28 * (192 * (64 + 96 + 16 + 32) + 9 * 96 * 128 + 25 * 16 * 32) == 128_049_152
  assert [n["label"] for n in reduced["nodes"]] == [
    "1x1 conv, 64",
    "1x1 conv, 96",
    "3x3 conv, 128",
    "1x1 conv, 16",
    "5x5 conv, 32",
    "3x3 max pool",
    "1x1 conv, 32",
  ]
  # the dataflow: each reduction feeds its convolution, the pool its projection, the rest read the module's input
  assert [n["inputs"] for n in reduced["nodes"]] == [[-1], [-1], [1], [-1], [3], [-1], [5]]
  assert naive["output_shape"][-1] == 64 + 128 + 32 + 192 and reduced["output_shape"][-1] == 256  # the naive one widens


def test_the_basic_block_and_the_bottleneck_with_their_shortcuts(tmp_path):
  from cnnjax.diagram import block_data

  basic = block_data("resnet34", "conv2_2")
  assert [n["label"] for n in basic["nodes"]] == ["3x3 conv, 64", "3x3 conv, 64"] and basic["input_shape"] == basic[
    "output_shape"
  ]
  bottleneck = block_data("resnet50", "conv3_1")  # Fig. 5: 1x1 reduces, 3x3, 1x1 restores; a projection where it halves
  assert [n["label"] for n in bottleneck["nodes"]] == [
    "1x1 conv, 128, /2",
    "3x3 conv, 128",
    "1x1 conv, 512",
    "shortcut: 1x1 conv, 512, /2",
  ]
  assert [n["inputs"] for n in bottleneck["nodes"]] == [[-1], [0], [1], [-1]]
  with pytest.raises(ValueError, match="resnet34 has no layer 'conv9_1'; its layers: conv1, conv2_1"):
    block_data("resnet34", "conv9_1")
  result = subprocess.run(
    [sys.executable, "-m", "cnnjax.draw", "--model=googlenet", "--block=inception_3a", f"--out={tmp_path / 'b.png'}"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  assert result.returncode == 0 and "2.37x the multiply-adds of the reduced one" in result.stdout, result.stderr
  assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_a_figure_names_only_the_options_that_change_the_network():
  """`--model=plain20 --options=shortcut=A` once titled the figure "plain20 (shortcut=A)": a plain net has no
  shortcut, and A is the default besides."""
  from cnnjax import complexity

  assert figure_data("plain20", shortcut="A")["options"] == {}
  assert figure_data("plain20", shortcut="C")["options"] == {}  # not the default, and still nothing to change
  assert figure_data("resnet20", shortcut="C")["options"] == {"shortcut": "C"}
  assert complexity.changing_options("resnet20", {"activation": "sigmoid", "norm": "none", "shortcut": "A"}) == {
    "activation": "sigmoid",
    "norm": "none",
  }


def test_local_response_normalisation_is_drawn_where_the_papers_draw_it():
  """AlexNet, section 3.5: "Response-normalization layers follow the first and second convolutional layers.
  Max-pooling layers follow both response-normalization layers". GoogLeNet's Fig. 3: LocalRespNorm after the first
  max-pool and after the 3x3 convolution. With BatchNorm in its place (a named option) there is none to draw."""
  kinds = lambda name, **options: [b["kind"] for b in figure_data(name, **options)["boxes"]]
  assert kinds("alexnet")[:6] == ["conv", "norm", "pool", "conv", "norm", "pool"]
  assert kinds("googlenet")[:7] == ["conv", "pool", "norm", "conv", "conv", "norm", "pool"]
  assert "norm" not in kinds("googlenet", norm="batchnorm") and "norm" not in kinds("alexnet_torchvision")
  assert totals(figure_data("googlenet"))["norm"] == 2
