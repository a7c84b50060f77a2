"""cnnjax.predict on a workdir cnnjax trained: the dataset's evaluation preprocessing and its class names."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from cnnjax import config as config_lib
from cnnjax import data, train
from cnnjax.predict import Predictor

from helpers import ROOT


def test_a_lenet_trained_on_digits_names_digits_and_its_json_is_one_line_per_image(tfds_dir, tmp_path):
  config = config_lib.load("lenet5")
  config.update(data_dir=tfds_dir, num_epochs=0, num_steps=2, eval_every_steps=2, log_every_steps=1)
  train.train_and_evaluate(config, str(tmp_path / "w"))
  digit = data.load("digits", tfds_dir).test[0]
  Image.fromarray(digit["image"][..., 0]).save(tmp_path / "digit.png")  # an 8x8 greyscale digit, as the dataset has it
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "cnnjax.predict",
      f"--workdir={tmp_path / 'w'}",
      "--format=json",
      "--top=10",
      str(tmp_path / "digit.png"),
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  assert out.returncode == 0, out.stderr
  (line,) = out.stdout.splitlines()
  top = json.loads(line)["top"]
  assert sorted(t["label"] for t in top) == list("0123456789") and all(t["label"] == str(t["index"]) for t in top)
  probabilities = [t["probability"] for t in top]
  assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-5
  # over the whole test split, prediction agrees with the run's own (pmapped, batched) evaluation
  predictor = Predictor.from_workdir(str(tmp_path / "w"))
  test = data.load("digits", tfds_dir).test
  hits = sum(int(np.argmax(predictor.probabilities(test[i]["image"])) == test[i]["label"]) for i in range(len(test)))
  summary = json.loads((tmp_path / "w" / "summary.json").read_text())
  assert hits / len(test) == summary["eval_accuracy"]
