"""Fuzzing what users hand cnnjax: command-line overrides, image files, damaged checkpoints. Each case must end
in a usable result or in one of the errors the commands print as one line (cli.USER_ERRORS), never another
exception. (Processes stopped at random points are fuzzed in test_main.)"""

import io
import shutil
import subprocess

import jax
import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnjax import checkpoint, cli, data, train
from cnnjax import config as config_lib
from cnnjax.data.sources import decode_image

from helpers import ROOT, command_line, main

CONFIGS = ("configs/lenet5.py", "configs/cifar_resnet.py:8,local")
# every field but data_dir, whose random values would be folders made wherever the tests run
FIELDS = sorted(set(config_lib.base()) - {"data_dir"}) + [
  "model_options.widths",
  "model_options.activation",
  "model_options.head",
  "model_options.stage_sizes",
  "model_options.norm",
  "lr_decay_steps",
]
VALUES = st.one_of(
  st.integers(-3, 3000).map(str),
  st.floats(allow_nan=True, allow_infinity=True).map(repr),
  st.sampled_from(
    [
      "",
      "True",
      "false",
      "nan",
      "-inf",
      "1e309",
      "(",
      "1,2",
      "(4,8,8)",
      "(0,0,0)",
      "[]",
      "relu",
      "sigmoid",
      "none",
      "fake",
      "digits",
      "cifar11",
      "imagefolder:/nowhere",
      "fake:8x8x3:3",
      "'x'",
      "None",
      "0x10",
      "1_000",
    ]
  ),
  st.text(max_size=6),
)


def outcome(argv) -> str:
  """'ok' if the command line gives a config that builds and traces a training step; else the error class name,
  which must be one the commands print as one line."""
  try:
    flag = command_line(*argv)
    config = flag.value
  except (
    flags.Error,
    AttributeError,
    KeyError,
    TypeError,
    ValueError,
  ) as e:  # what config.parse_flags prints as one line
    return f"parse:{type(e).__name__}"
  try:
    config = config_lib.from_command_line(flag)
    config.num_steps, config.num_epochs = max(config.num_steps, 1), 0  # only the step is traced, not run
    run = train.build(config)
    jax.eval_shape(lambda: train.initial_state(run))
    return "ok"
  except cli.USER_ERRORS as e:
    return type(e).__name__


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CONFIGS), st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=3))
@example("configs/lenet5.py", [("batch_size", "0")])
@example("configs/lenet5.py", [("learning_rate", "nan")])
@example("configs/cifar_resnet.py:8,local", [("model_options.widths", "(4,8)")])
@example("configs/lenet5.py", [("num_epochs", "0")])
@example("configs/lenet5.py", [("channels", "2")])
def test_random_overrides_give_a_config_that_builds_or_one_clear_error(tfds_dir, config, overrides):
  argv = [f"--config={config}", f"--config.data_dir={tfds_dir}"] + [f"--config.{f}={v}" for f, v in overrides]
  assert outcome(argv)  # any other exception fails the test, with the arguments that raised it


@pytest.mark.parametrize(
  "args,message",
  [
    (["--config.batch_size=0"], "batch_size=0 is out of range"),
    (["--config.learning_rate=nan"], "learning_rate=nan is out of range"),
    (["--config.model_options.widths=(4,8)"], "must give one width per stage"),
    (["--config.momentum=1.5"], "momentum=1.5 is out of range"),
  ],
)
def test_the_command_answers_malformed_overrides_with_one_line(tfds_dir, tmp_path, args, message):
  result = subprocess.run(
    main("--config=configs/cifar_resnet.py:8,local", f"--config.data_dir={tfds_dir}", *args, f"--workdir={tmp_path}"),
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def _encoded(kind: str, mode: str, size) -> bytes:
  rng = np.random.default_rng(0)
  channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4, "LA": 2}[mode]
  pixels = rng.integers(0, 256, (size[1], size[0], channels), np.uint8)
  image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode if mode in ("L", "RGB", "RGBA") else None)
  if mode in ("CMYK", "LA"):
    image = Image.fromarray(pixels[..., :3]).convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, format=kind)
  return buffer.getvalue()


# every mode each format can store, among grey, colour, alpha and print (CMYK)
FORMATS = (
  [("PNG", m) for m in ("L", "LA", "RGB", "RGBA")]
  + [("JPEG", m) for m in ("L", "RGB", "CMYK")]
  + [
    ("GIF", "L"),
    ("GIF", "RGB"),
    ("BMP", "L"),
    ("BMP", "RGB"),
    ("TIFF", "RGBA"),
    ("TIFF", "CMYK"),
    ("WEBP", "RGB"),
    ("WEBP", "RGBA"),
  ]
)
ODD_IMAGES = st.builds(
  lambda kind_mode, size: _encoded(*kind_mode, size),
  st.sampled_from(FORMATS),
  st.tuples(st.integers(1, 40), st.integers(1, 40)),
)


@settings(max_examples=150)
@example(
  (_encoded("BMP", "L", (1, 1)), 0, [21]), False
)  # a flipped bit claims 1.5 billion pixels: a decompression bomb
@given(
  ODD_IMAGES.flatmap(
    lambda b: st.tuples(st.just(b), st.integers(0, len(b)), st.lists(st.integers(0, len(b) - 1), max_size=4))
  ),
  st.booleans(),
)
def test_corrupt_and_odd_image_files_decode_to_rgb_or_raise_one_clear_error(tmp_path_factory, case, truncate):
  encoded, cut, flips = case
  damaged = bytearray(encoded[:cut] if truncate else encoded)
  for i in flips:
    if i < len(damaged):
      damaged[i] ^= 0x5A
  path = tmp_path_factory.mktemp("img") / "x.img"
  path.write_bytes(bytes(damaged))
  try:
    image = decode_image(str(path))
  except data.DatasetError as e:
    assert str(e).startswith(f"cannot decode image {path}: ")
  else:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_damaged_checkpoints_fall_back_to_an_intact_one_or_are_refused_in_one_line(tfds_dir, tmp_path):
  config = config_lib.load("lenet5")
  config.update(
    data_dir=tfds_dir, batch_size=16, num_steps=4, checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=1000
  )
  train.train_and_evaluate(config, str(tmp_path / "pristine"))
  run = train.build(config)
  intact = {}
  for step in (2, 4):  # each step's state as saved
    shutil.copytree(tmp_path / "pristine", tmp_path / f"only{step}")
    shutil.rmtree(tmp_path / f"only{step}" / "checkpoints" / str(6 - step))
    intact[step] = train.latest_state(run, str(tmp_path / f"only{step}"))
  files = sorted(
    p.relative_to(tmp_path / "pristine") for p in (tmp_path / "pristine" / "checkpoints").rglob("*") if p.is_file()
  )
  rng = np.random.default_rng(0)
  outcomes = set()
  for trial in range(12):
    copy = tmp_path / f"trial{trial}"
    shutil.copytree(tmp_path / "pristine", copy)
    for name in rng.choice(files, size=rng.integers(1, 4), replace=False):
      target = copy / name
      content = target.read_bytes()
      target.write_bytes(content[: rng.integers(0, max(1, len(content)))])  # cut short, maybe to nothing
    try:
      state = train.latest_state(run, str(copy))
    except checkpoint.CheckpointError as e:
      outcomes.add("refused")
      assert "no readable checkpoint" in str(e)
      continue
    outcomes.add(f"step {int(state.step)}")
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(intact[int(state.step)].params)):
      np.testing.assert_array_equal(a, b)  # whatever is restored is exactly what was saved at that step
  assert len(outcomes) >= 2, outcomes  # the damage reached more than one outcome: the trials meant something
