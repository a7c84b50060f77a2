"""`python -m cnnjax.bench` runs and reports every field; the speed figures themselves belong in docs/performance.md."""

import json
import os
import subprocess
import sys

import pytest

from cnnjax import bench, bench_torch
from cnnjax.throughput import imagenet_like

from helpers import ROOT, load_config

FIELDS = {
  "img_per_s",
  "step_ms",
  "host_ms_per_step",
  "compile_s",
  "startup_s",
  "peak_rss_mb",
  "backend",
  "device_kind",
  "eval_img_per_s",
  "mfu",
}


def test_reports_every_field_for_the_step_alone_and_fed(tfds_dir):
  config = load_config("lenet5", data_dir=tfds_dir, batch_size=32)
  for input_kind in ("fake", "real"):
    report = bench.run(config, input_kind, steps=2, window=1, warmup=1)
    assert set(report) >= FIELDS and report["input"] == input_kind and report["devices"] == 8
    # what can be wrong: a compile never timed, a start-up that leaves the compile out, memory in the wrong unit
    # (a process with JAX and XLA loaded holds several hundred MB; in GB or bytes it would be far off)
    assert report["compile_s"] > 0 and report["startup_s"] >= report["compile_s"], report
    assert 100 < report["peak_rss_mb"] < 100_000 and report["img_per_s"] > 0 and report["step_ms"] > 0, report
    assert report["backend"] == "cpu" and report["mfu"] is None  # no known peak for a CPU
    assert (
      report["train_flops_per_image"] == 6 * 326_520
    )  # LeNet-5, partial C3: 326,520 MACs (docs/reference.md, section 1)


def test_real_input_from_jpeg_files_whose_test_split_is_one_batch(tmp_path):
  """launch/gpu_bench.sh's real-pipeline run: JPEG files decoded and cropped by grain, a test split of 10 images."""
  imagenet_like(str(tmp_path), n=20, classes=10)
  config = load_config("lenet5", dataset=f"imagefolder:{tmp_path}", batch_size=16)
  report = bench.run(config, "real", steps=1, window=1, warmup=1)
  assert report["img_per_s"] > 0 and report["eval_img_per_s"] > 0


def test_protocol_costs_time_every_protocol_on_photos(tmp_path):
  config = load_config("resnet", "18,local", batch_size=8)
  config.model_options.update(stage_sizes=(1, 1, 1, 1), widths=(8, 8, 8, 8))
  rows = bench.protocol_costs(config, ["center", "dense"], images=2, folder=str(tmp_path))
  assert [(r["protocol"], r["views"]) for r in rows] == [("center", 1), ("dense", 10)]
  assert rows[1]["scales"] == "224,256,384,480,640"  # ResNet's (Table 4), in proportion at this input
  assert all(
    r["images_per_s"] > 0 and r["views_per_s"] == pytest.approx(r["views"] * r["images_per_s"], rel=0.01) for r in rows
  )


def test_peak_flops_by_device_kind():
  assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and bench.peak_flops("NVIDIA H100 PCIe") == 756e12
  assert bench.peak_flops("TPU v4") == 275e12 and bench.peak_flops("cpu") is None


def test_an_unprepared_dataset_names_the_offline_variant_of_the_config(tmp_path):
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path)}
  result = subprocess.run(
    [sys.executable, "-m", "cnnjax.bench", "--config=configs/resnet.py:50", "--input=real"],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    check=False,
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "imagenet2012" in result.stderr and "--config=configs/resnet.py:50,local" in result.stderr


# Parameters and multiply-adds of the networks as cnnjax builds them (docs/reference.md, sections 5 and 6)
@pytest.mark.parametrize(
  "name,stride_in,params,macs",
  [
    ("resnet20", "v1", 269_722, 40_551_040),
    ("resnet56", "v1", 853_018, 125_485_696),
    ("resnet50", "v1", 25_557_032, 3_857_973_248),
    ("resnet50", "v1.5", 25_557_032, 4_089_184_256),
  ],
)
def test_the_pytorch_peer_builds_the_networks_cnnjax_builds(name, stride_in, params, macs):
  torch = pytest.importorskip("torch", reason="the PyTorch peer needs torch: pip install -e '.[torch]'")
  from torch.utils.flop_counter import FlopCounterMode

  model, _classes, size = bench_torch.build(name, stride_in)
  with FlopCounterMode(display=False) as counter:
    model.eval()(torch.zeros(1, 3, size, size))
  assert sum(p.numel() for p in model.parameters()) == params
  assert counter.get_total_flops() == 2 * macs  # PyTorch counts a multiply-add as 2 FLOPs


def test_the_pytorch_peer_reports_a_step_as_cnnjax_bench_does():
  pytest.importorskip("torch", reason="the PyTorch peer needs torch: pip install -e '.[torch]'")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "cnnjax.bench_torch",
      "--model=resnet20",
      "--batch=8",
      "--steps=2",
      "--window=1",
      "--warmup=1",
    ],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
  )
  report = json.loads(result.stdout)
  assert report["framework"] == "pytorch" and report["batch"] == 8 and report["params"] == 269_722
  assert report["img_per_s"] > 0 and report["peak_rss_mb"] > 100  # torch's own libraries take more than that
  bad = subprocess.run([sys.executable, "-m", "cnnjax.bench_torch", "--model=resnet21"], capture_output=True, text=True)
  assert (
    bad.returncode == 1 and bad.stderr.startswith("error: unknown model 'resnet21'") and "Traceback" not in bad.stderr
  )
