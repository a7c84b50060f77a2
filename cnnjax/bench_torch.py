"""The PyTorch peer of `python -m cnnjax.bench`: the same networks and the same training step, timed the same way.

    pip install torch==2.13.0                    # any recent PyTorch; not a cnnjax dependency
    python -m cnnjax.bench_torch --model=resnet20 --batch=128 --steps=20                 # CPU, float32
    python -m cnnjax.bench_torch --model=resnet50 --batch=16 --image=224 --steps=5
    python -m cnnjax.bench_torch --model=resnet50 --batch=256 --device=cuda --dtype=bfloat16   # AMP on a GPU

Networks, written here as cnnjax builds them (configs/cifar_resnet.py, configs/resnet.py):
- `resnetN`, N = 6n+2: the CIFAR ResNet of He et al. 2015 section 4.2 (3x3 stem of 16, three stages of n basic
  blocks on 16/32/64 channels, option-A shortcuts: strided identity, zero-padded channels), 32x32 inputs;
- `resnet50`: the ImageNet bottleneck ResNet-50, option-B projections, the stride in the first 1x1 conv of a
  stage (`--stride_in=v1`, the paper's and cnnjax's default) or in its 3x3 (`v1.5`, torchvision's), 224x224.
The step: SGD with momentum 0.9 and weight decay 1e-4 on cross-entropy, channels_last, constant inputs.
Step time is the median over windows of --window steps with one device sync per window (cnnjax.bench's rule);
`--dtype=bfloat16` trains under autocast (fp32 weights), as cnnjax's `dtype=bfloat16`. Prints one JSON line.
"""

import argparse
import json
import statistics
import sys
import time


def _conv(cin: int, cout: int, kernel: int, stride: int = 1):
  import torch.nn as nn

  return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)


def _blocks():
  """(Basic, Bottleneck): the peer's residual blocks, their modules named as torchvision's (conv1, bn1, ...,
  downsample). (Defined on first use: only the peer imports torch.)"""
  import torch.nn as nn
  import torch.nn.functional as F

  class Basic(nn.Module):
    """Two 3x3 convs; the option-A shortcut strides the input and pads the new channels with zeros."""

    def __init__(self, cin, cout, stride, stride_in=None):
      super().__init__()
      self.conv1, self.bn1 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
      self.conv2, self.bn2 = _conv(cout, cout, 3), nn.BatchNorm2d(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      shortcut = x[:, :, :: self.stride, :: self.stride]
      if self.extra:
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))  # zeros after the existing channels, as cnnjax
      return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + shortcut)

  class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 (4x width), the stride in the first (v1) or the 3x3 (v1.5); a projection (1x1 conv + BN)
    where the shape changes."""

    def __init__(self, cin, width, stride, stride_in="v1"):
      super().__init__()
      first, middle = (stride, 1) if stride_in == "v1" else (1, stride)
      self.conv1, self.bn1 = _conv(cin, width, 1, first), nn.BatchNorm2d(width)
      self.conv2, self.bn2 = _conv(width, width, 3, middle), nn.BatchNorm2d(width)
      self.conv3, self.bn3 = _conv(width, 4 * width, 1), nn.BatchNorm2d(4 * width)
      changes = stride != 1 or cin != 4 * width
      self.downsample = nn.Sequential(_conv(cin, 4 * width, 1, stride), nn.BatchNorm2d(4 * width)) if changes else None

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
      return F.relu(y + (x if self.downsample is None else self.downsample(x)))

  return Basic, Bottleneck


def _resnet():
  """The peer's network, named as torchvision's ResNet (conv1, bn1, layer1.0.conv1, ..., fc), so cnnjax reads its
  weights by the same rule as torchvision's."""
  import torch.nn as nn
  import torch.nn.functional as F

  class ResNet(nn.Module):
    """A stem (7x7/2 and a 3x3/2 max-pool, or CIFAR's one 3x3 conv), stages of `block`s (the first of each stage
    after the first halving the map), a globally pooled classifier."""

    def __init__(self, block, stem: int, sizes, widths, expansion: int, classes: int, stride_in: str = "v1"):
      super().__init__()
      imagenet = stem == 7
      self.conv1, self.bn1 = _conv(3, widths[0], stem, 2 if imagenet else 1), nn.BatchNorm2d(widths[0])
      self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
      cin, self.stages = widths[0], len(sizes)
      for i, (size, width) in enumerate(zip(sizes, widths)):
        blocks = []
        for j in range(size):
          blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1, stride_in))
          cin = width * expansion
        self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
      self.fc = nn.Linear(cin, classes)

    def forward(self, x):
      x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
      for i in range(self.stages):
        x = getattr(self, f"layer{i + 1}")(x)
      return self.fc(x.mean((2, 3)))

  return ResNet


def build(name: str, stride_in: str = "v1"):
  """(model, classes, image size) of a network named as cnnjax names it."""
  (basic, bottleneck), resnet = _blocks(), _resnet()
  if name == "resnet50":
    if stride_in not in ("v1", "v1.5"):
      raise SystemExit(f"error: unknown --stride_in {stride_in!r}; valid: v1, v1.5")
    return resnet(bottleneck, 7, (3, 4, 6, 3), (64, 128, 256, 512), 4, 1000, stride_in), 1000, 224
  depth = name.removeprefix("resnet")
  if depth.isdigit() and int(depth) >= 8 and (int(depth) - 2) % 6 == 0:
    n = (int(depth) - 2) // 6
    return resnet(basic, 3, (n, n, n), (16, 32, 64), 1, 10), 10, 32
  raise SystemExit(f"error: unknown model {name!r}; valid: resnet50, and resnetN for N = 6n+2 (20, 32, 44, 56, 110)")


def _median_step_s(step, sync, args) -> float:
  """Seconds per step: the median over windows of `args.window` steps, after `args.warmup` steps."""
  for _ in range(args.warmup):
    step()
  sync()
  windows = []
  for _ in range(max(1, args.steps // args.window)):
    start = time.perf_counter()
    for _ in range(args.window):
      step()
    sync()
    windows.append((time.perf_counter() - start) / args.window)
  return statistics.median(windows)


def run(args) -> dict:
  import torch
  import torch.nn.functional as F

  torch.manual_seed(0)
  if args.threads:
    torch.set_num_threads(args.threads)
  device = torch.device(args.device)
  if device.type == "cuda":
    if not torch.cuda.is_available():
      raise SystemExit("error: --device=cuda, but this PyTorch sees no CUDA device")
    torch.backends.cudnn.benchmark = True
  model, classes, size = build(args.model, args.stride_in)
  size = args.image or size
  params = sum(p.numel() for p in model.parameters())
  model = model.to(device, memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  images = torch.randn(args.batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
  labels = torch.randint(0, classes, (args.batch,), device=device)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()

  step_s = _median_step_s(step, sync, args)
  report = {
    "framework": "pytorch",
    "torch": torch.__version__,
    "model": args.model,
    "stride_in": args.stride_in,
    "params": params,
    "batch": args.batch,
    "image": [size, size, 3],
    "dtype": args.dtype,
    "device": args.device,
    "device_kind": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    "threads": torch.get_num_threads(),
    "step_ms": round(step_s * 1e3, 2),
    "img_per_s": round(args.batch / step_s, 1),
  }
  if device.type == "cuda":
    report["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
  else:
    import resource

    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20", help="resnet50, or resnetN (CIFAR, N = 6n+2)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image", type=int, default=0, help="input size; 0: the network's own")
  parser.add_argument("--stride_in", default="v1", help="resnet50: v1 (the paper's, cnnjax's default) or v1.5")
  parser.add_argument("--device", default="cpu", help="cpu or cuda")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, default=20, help="timed steps, in windows of --window")
  parser.add_argument("--window", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0: PyTorch's default")
  args = parser.parse_args(argv)
  try:
    import torch  # noqa: F401
  except ImportError:
    sys.exit("error: the PyTorch peer needs torch: pip install -e '.[torch]' (or any recent torch)")
  print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
  main()
