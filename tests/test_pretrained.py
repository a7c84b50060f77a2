"""torchvision's weights in the zoo's models: the same logits as torchvision itself, for every published layout.

Nothing is downloaded: each torchvision model is built with random weights, and every tensor it has (weights,
biases, BatchNorm's affine parameters and running statistics) is randomised, so a tensor that landed in the wrong
place, or in the wrong layout, shows in the logits. Needs torchvision (`pip install -e '.[torch]'`); without it the
module is skipped, and pytest's -rs line says so.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity tests compare with torchvision: pip install -e '.[torch]'")
tv_models = pytest.importorskip(
  "torchvision.models", reason="the parity tests compare with torchvision: pip install -e '.[torch]'"
)
# (imported after the skips: they need torch)
from safetensors.torch import save_file
from torchvision.models._meta import _IMAGENET_CATEGORIES  # torchvision's names for ImageNet's classes

from cnnjax.models import pretrained
from cnnjax.models.pretrained import WeightsError, from_torchvision

from torch_twins import torchvision_model

# The smallest inputs each network takes in torchvision (its 2x2 pools fail on a 1x1 map, AlexNet's on under 63):
# small sizes keep the suite fast; the adaptive pools they exercise are checked at 224 by test_parity_at_224.
SMALL = {"alexnet_torchvision": 64}


def logits_agree(name, torch_model, size, **options):
  x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = torch_model(x).numpy()
  model, variables = from_torchvision(name, torch_model.state_dict(), **options)
  logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.numpy().transpose(0, 2, 3, 1))
  error = np.abs(np.asarray(logits) - expected).max()
  assert error <= 1e-4 * np.abs(expected).max(), f"{name}: logits differ by {error} (largest {np.abs(expected).max()})"
  return model, variables


@pytest.mark.parametrize("name", list(pretrained.TORCHVISION))
def test_every_torchvision_layout_gives_torchvisions_logits(name):
  logits_agree(name, torchvision_model(name), SMALL.get(name, 32))


def test_both_file_forms_give_back_the_state_dict_to_the_bit(tmp_path):
  # how a file is read does not depend on the network (from_torchvision(file) is from_torchvision(read(file))), so
  # one network with every kind of tensor torchvision saves: float weights, BatchNorm's statistics and its int64
  # batch counter. Each form must give back the state dict, every tensor to the bit, so the same model and variables.
  state = torchvision_model("resnet18").state_dict()
  assert {v.dtype for v in state.values()} == {torch.float32, torch.int64}
  torch.save(state, tmp_path / "weights.pth")
  save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
  for form in ("weights.pth", "weights.safetensors"):
    read = pretrained.read(tmp_path / form)
    assert read.keys() == state.keys() and all(np.array_equal(read[k], state[k].numpy()) for k in state), form
    assert all(read[k].dtype == state[k].numpy().dtype for k in state), form


def test_parity_at_224_with_googlenets_own_pools():
  # 224x224, torchvision's evaluation size: 7x7 maps before the pool, the 2x2/2 ceil-mode pool before 5a on 14x14
  logits_agree("googlenet_torchvision", torchvision_model("googlenet_torchvision"), 224)


def test_options_apply_over_torchvisions_own():
  torch_model = torchvision_model("googlenet_torchvision")
  torch_model.transform_input = False
  model, _ = logits_agree("googlenet_torchvision", torch_model, 32, transform_input=False)
  assert model.transform_input is False


def test_the_weights_decide_the_classes_and_googlenets_auxiliary_heads():
  model, variables = from_torchvision("resnet18", torchvision_model("resnet18", num_classes=10).state_dict())
  assert model.num_classes == 10 and variables["params"]["fc"]["kernel"].shape == (512, 10)
  with_aux, variables = from_torchvision(
    "googlenet_torchvision", torchvision_model("googlenet_torchvision").state_dict()
  )
  assert with_aux.aux_heads and variables["params"]["aux_4d"]["fc"]["kernel"].shape == (2048, 1024)
  no_aux = tv_models.googlenet(weights=None, aux_logits=False, init_weights=False).state_dict()
  assert not from_torchvision("googlenet_torchvision", no_aux)[0].aux_heads


def test_every_tensor_is_accounted_for():
  state = {k: v.numpy() for k, v in torchvision_model("resnet18").state_dict().items()}
  with pytest.raises(WeightsError, match=r"missing 1: layer3\.0\.downsample\.1\.running_var"):
    from_torchvision("resnet18", {k: v for k, v in state.items() if k != "layer3.0.downsample.1.running_var"})
  with pytest.raises(WeightsError, match=r"unexpected 1: layer5\.0\.conv1\.weight"):
    from_torchvision("resnet18", {**state, "layer5.0.conv1.weight": state["layer4.0.conv1.weight"]})
  with pytest.raises(WeightsError, match=r"misshaped 1: layer1\.0\.conv1\.weight \(64, 64, 5, 5\)"):
    from_torchvision("resnet18", {**state, "layer1.0.conv1.weight": np.zeros((64, 64, 5, 5), np.float32)})
  with pytest.raises(WeightsError, match=r"do not fit torchvision's resnet34: missing 80: layer1\.2\.bn1\.bias"):
    from_torchvision("resnet34", state)  # resnet18's file for resnet34: the blocks it lacks, by name
  with pytest.raises(ValueError, match="no torchvision weights for 'resnet20'; valid: alexnet_torchvision, vgg11"):
    from_torchvision("resnet20", state)


def test_unreadable_files_are_one_line(tmp_path, monkeypatch):
  with pytest.raises(WeightsError, match="no weight file"):
    from_torchvision("resnet18", tmp_path / "absent.pth")
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(WeightsError, match=r"a torchvision \.pth file or a \.safetensors file"):
    from_torchvision("resnet18", tmp_path / "weights.npz")
  (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 cut short")
  with pytest.raises(WeightsError, match=r"cannot read .*cut\.pth: "):
    from_torchvision("resnet18", tmp_path / "cut.pth")
  monkeypatch.setitem(sys.modules, "torch", None)  # as on an install without the [torch] extra
  with pytest.raises(WeightsError, match=r"needs PyTorch: pip install -e '\.\[torch\]'"):
    from_torchvision("resnet18", tmp_path / "cut.pth")


def command(module, *args, env=None):
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=pathlib.Path(__file__).resolve().parent.parent,
    env=env,
    check=False,
  )


def test_convert_then_predict_gives_torchvisions_probabilities_through_its_own_preprocessing(tmp_path):
  from PIL import Image
  from torchvision import transforms

  torch_model = torchvision_model("resnet18")
  torch.save(torch_model.state_dict(), tmp_path / "resnet18.pth")
  converted = command(
    "cnnjax.convert", "--model=resnet18", f"--weights={tmp_path / 'resnet18.pth'}", f"--workdir={tmp_path / 'w'}"
  )
  assert converted.returncode == 0, converted.stderr
  assert "resnet18 (11,689,512 parameters)" in converted.stdout  # torchvision's published count
  rng = np.random.default_rng(0)
  # odd sizes: the resize truncates the longer side (301 * 256 / 203 = 379.6 -> 379), the crop offset rounds half
  # to even ((379 - 224) / 2 = 77.5 -> 78): torchvision's arithmetic, not round() and //
  Image.fromarray(rng.integers(0, 256, (203, 301, 3), np.uint8)).save(tmp_path / "photo.png")
  (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  predicted = command(
    "cnnjax.predict",
    f"--workdir={tmp_path / 'w'}",
    "--format=json",
    tmp_path / "photo.png",
    tmp_path / "cut.jpg",
    tmp_path / "absent.jpg",
  )
  assert predicted.returncode == 1
  assert predicted.stderr.splitlines() == [
    f"error: {tmp_path / 'cut.jpg'}: not a readable image (Truncated File Read)",
    f"error: {tmp_path / 'absent.jpg'}: no such file",
    "error: 2 of 3 image(s) could not be read",
  ]
  (line,) = predicted.stdout.splitlines()
  result = json.loads(line)
  preprocess = transforms.Compose(
    [
      transforms.Resize(256),
      transforms.CenterCrop(224),
      transforms.ToTensor(),
      transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
  )
  with torch.no_grad():
    expected = torch.softmax(torch_model(preprocess(Image.open(tmp_path / "photo.png"))[None]), -1)[0].numpy()
  order = np.argsort(-expected)[:5]
  assert result["image"] == str(tmp_path / "photo.png")
  assert [t["index"] for t in result["top"]] == order.tolist()
  assert np.allclose([t["probability"] for t in result["top"]], expected[order], rtol=1e-4)
  assert [t["label"] for t in result["top"]] == [_IMAGENET_CATEGORIES[i] for i in order]


@pytest.mark.parametrize("protocol", ["center", "ten_crop"])
def test_a_converted_workdir_evaluates_on_imagenet_as_torchvision_does(small_tfds, tmp_path, protocol):
  """--mode=eval of torchvision's weights, one centre crop or AlexNet's ten (softmax averaged), against torchvision's
  model on its own Resize(256) + CenterCrop(224) or TenCrop(224) of the same decoded images."""
  from PIL import Image
  from torchvision import transforms

  from cnnjax import data

  torch_model = torchvision_model("resnet18")
  save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, tmp_path / "resnet18.safetensors")
  weights, workdir = tmp_path / "resnet18.safetensors", tmp_path / "w"
  assert command("cnnjax.convert", "--model=resnet18", f"--weights={weights}", f"--workdir={workdir}").returncode == 0
  env = {**os.environ, "TFDS_DATA_DIR": small_tfds}
  evaluated = command(
    "cnnjax.main", "--mode=eval", f"--workdir={workdir}", f"--config.eval_protocol={protocol}", env=env
  )
  assert evaluated.returncode == 0, evaluated.stderr
  result = dict(zip(*[iter(evaluated.stdout.splitlines()[-1].split())] * 2))
  # torchvision on the same decoded validation images, through its own preprocessing
  validation = data.load("imagenet2012", small_tfds).test
  crops = transforms.TenCrop(224) if protocol == "ten_crop" else (lambda image: [transforms.CenterCrop(224)(image)])
  to_input = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
  )
  probabilities = []
  for i in range(len(validation)):
    views = torch.stack([to_input(c) for c in crops(transforms.Resize(256)(Image.fromarray(validation[i]["image"])))])
    with torch.no_grad():
      probabilities.append(torch.softmax(torch_model(views).double(), -1).mean(0))
  probabilities = torch.stack(probabilities)
  labels = torch.tensor([validation[i]["label"] for i in range(len(validation))])
  loss = -torch.log(probabilities[torch.arange(len(labels)), labels]).mean().item()
  assert result["step"] == "0" and result["protocol"] == protocol and len(validation) == 6
  assert float(result["eval_loss"]) == pytest.approx(loss, rel=1e-3)  # (printed to 4 decimals)
  assert float(result["eval_accuracy"]) == pytest.approx((probabilities.argmax(-1) == labels).double().mean().item())
  assert float(result["views_per_s"]) > 0
  recorded = json.loads((workdir / "evaluations.jsonl").read_text())  # the same evaluation, unrounded
  assert recorded["protocol"] == protocol and recorded["eval_loss"] == pytest.approx(loss, rel=1e-4)


def test_fine_tuning_from_a_torchvision_file_starts_from_its_body_with_a_new_head(tmp_path, capsys):
  # the start of a run (init_from.start_from); that a frozen body stays so while training is test_finetune's
  from cnnjax import config as config_lib
  from cnnjax import init_from, train

  state = {k: v.contiguous() for k, v in torchvision_model("resnet18").state_dict().items()}
  save_file(state, tmp_path / "resnet18.safetensors")
  config = config_lib.load("finetune", "resnet18")
  config.update(dataset="fake:32x32x3:5", image_size=32, init_from=str(tmp_path / "resnet18.safetensors"))
  run = train.build(config)
  fresh = train.initial_state(run)
  started = init_from.start_from(fresh, config, run.step_config.model, run.dataset.num_classes)
  assert (
    f"note: started from {tmp_path / 'resnet18.safetensors'}; new fc for 5 classes of fake:32x32x3:5"
    in capsys.readouterr().out
  )
  expected = from_torchvision("resnet18", state)[1]
  same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool((np.asarray(x) == np.asarray(y)).all()), a, b))
  for collection in ("params", "batch_stats"):
    for layer, tree in expected[collection].items():
      if layer != "fc":  # torchvision's tensors, bit for bit
        assert same(tree, getattr(started, collection)[layer])
  assert same(started.params["fc"], fresh.params["fc"]) and started.params["fc"]["kernel"].shape == (512, 5)


def test_visualize_shows_torchvisions_first_kernels():
  from cnnjax.predict import Predictor
  from cnnjax.visualize import first_kernel

  torch_model = torchvision_model("alexnet_torchvision")
  name, kernel = first_kernel(Predictor.from_torchvision("alexnet_torchvision", torch_model.state_dict()))
  assert name == "conv1" and np.array_equal(
    kernel, torch_model.features[0].weight.detach().numpy().transpose(2, 3, 1, 0)
  )
