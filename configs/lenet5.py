"""LeNet-5 (LeCun et al. 1998) on the bundled `digits` dataset: the quickstart, offline, on a laptop CPU.

    python -m cnnjax.main --config=configs/lenet5.py              # digits, 8x8 upsampled to 32x32
    python -m cnnjax.main --config=configs/lenet5.py:mnist        # the paper's MNIST (prepare it first)

Hardware: any CPU; on 2 cores the digits run takes about a minute.
Expected: digits test accuracy >= 97% (as measured: the lenet5 block of docs/architectures.md). MNIST: the paper
reports 0.95% test error without distortions (LeNet-5, 20 passes). The paper trains with stochastic diagonal
Levenberg-Marquardt; here plain SGD with momentum, which reaches the same regime on these small problems.
"""

import ml_collections

from cnnjax import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.model = "lenet5"
  config.dataset = "digits"
  config.image_size, config.channels = 32, 1
  config.augment = "none"  # the paper's baseline used no distortions
  config.batch_size = 32
  config.num_epochs = 30
  config.learning_rate = 0.005  # the RBF output's squared distances make larger rates diverge
  config.weight_decay = 0.0
  config.schedule = "cosine"
  config.log_every_steps = 20
  if arg == "mnist":
    config.dataset = "mnist"  # 28x28 digits padded to the 32x32 field, as in the paper
    config.num_epochs = 20
  elif arg not in ("", "local"):
    raise ValueError(f"unknown lenet5 config argument {arg!r}; valid: mnist, local")
  return config_lib.finish(config)
