"""The degradation grid of He et al. 2015 (Fig. 6): CIFAR plain and residual nets of depth 20-56, three seeds.

    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py:local --workdir=runs/degradation-sweep --parallel=2
    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py --workdir=gs://BUCKET/degradation --print_commands

`:local` trains on the bundled `digits` (configs/cifar_resnet.py's local recipe, 10 epochs; the first command took
42 min for all 24 runs on 2 CPU cores; training error, mean of 3 seeds: plain-20/32/44/56 0.0 / 0.0 / 4.8 / 30.2%,
ResNet-20..56 all 0.0%); without it, the paper's CIFAR-10 recipe (64k iterations per run: a GPU or TPU job each).
`python -m cnnjax.experiments.degradation` runs the same grid and also draws the paper's figure.
"""

from cnnjax.sweep import grid

DEPTHS = (20, 32, 44, 56)


def get_sweep(arg: str = ""):
  if arg not in ("", "local"):
    raise ValueError(f"degradation sweep argument {arg!r}: write nothing or 'local'")
  suffix = ",local" if arg == "local" else ""
  configs = [f"configs/cifar_resnet.py:{depth}{kind}{suffix}" for depth in DEPTHS for kind in (",plain", "")]
  return grid(config=configs, seed=[0, 1, 2])
