"""The degradation grid of He et al. 2015 (Fig. 6): CIFAR plain and residual nets of depth 20-56, three seeds.

    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py:local --workdir=runs/degradation-sweep --parallel=2
    python -m cnnjax.sweep --sweep=configs/sweeps/degradation.py --workdir=gs://BUCKET/degradation --print_commands

`:local` trains on the bundled `digits` (configs/cifar_resnet.py's local recipe, 30 epochs). On 2 CPU cores at
commit cc73f54 the first command took 45 min (beside other work) for all 24 runs, one run per core; training
error, mean of 3 seeds: plain-20/32/44/56 0.0 / 0.0 / 3.8 / 25.8%, ResNet-20..56 all 0.0% (test error 0.7 / 2.2 /
7.1 / 28.5% against 0.6 to 0.8%). Without `:local`, the paper's CIFAR-10 recipe (64k iterations per run: a GPU or
TPU job each).
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
