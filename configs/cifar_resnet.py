"""CIFAR-10 ResNets and plain nets (He et al. 2015, section 4.2): `:DEPTH[,plain][,local]`, DEPTH = 6n+2.

    python -m cnnjax.main --config=configs/cifar_resnet.py:56          # ResNet-56
    python -m cnnjax.main --config=configs/cifar_resnet.py:56,plain    # plain-56 (Fig. 1 / Fig. 6)
    python -m cnnjax.main --config=configs/cifar_resnet.py:110         # with the paper's 0.01 warm-up
    python -m cnnjax.main --config=configs/cifar_resnet.py:20,local    # offline on `digits`, 16x16, CPU
    ... --config.model_options.activation=sigmoid --config.model_options.norm=none   # gradient-flow studies
    ... --config.model_options.preactivation=True                                     # identity shortcut path

Dataset: cifar10 prepared as array_record (docs/data.md). Hardware: one GPU (the paper: two), or a CPU
for ResNet-20 with patience. Recipe: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by
10 at 32k and 48k iterations, stop at 64k; 4-pixel pad, random 32x32 crop, flip (`augment='cifar'`); option-A
shortcuts; tested on the single 32x32 image.
ResNet-110 (and deeper) warm up at lr 0.01 for 400 iterations ("until the training error is below 80%").
Paper test error (Table 6): ResNet-20 8.75%, 32 7.51%, 44 7.17%, 56 6.97%, 110 6.43% (best of 5).
"""

import ml_collections

from cnnjax import config as config_lib


def get_config(arg: str = "20") -> ml_collections.ConfigDict:
  args = [a for a in arg.split(",") if a]
  depth = int(args[0]) if args and args[0].isdigit() else -1
  if depth < 8 or (depth - 2) % 6 or set(args[1:]) - {"plain", "local"}:
    raise ValueError(
      f"cifar_resnet config argument {arg!r}: write DEPTH[,plain][,local] with DEPTH = 6n+2 (20, 32, 44, 56, 110)"
    )
  config = config_lib.base()
  config.model = ("cifar_plain" if "plain" in args else "cifar_resnet") + str(depth)
  config.dataset = "cifar10"
  config.augment = "cifar"
  config.image_size = 32
  config.batch_size = 128
  config.learning_rate = 0.1
  config.weight_decay = 1e-4
  config.num_steps, config.num_epochs = 64_000, 0  # the paper counts iterations, not epochs
  config.lr_decay_steps, config.lr_decay_epochs = (32_000, 48_000), ()
  config.eval_every_steps, config.eval_every_epochs = 2_000, 0
  if depth >= 110:
    config.warmup_steps, config.warmup_type, config.warmup_lr = 400, "constant", 0.01
  if "local" in args:
    # 8x8 digits upsampled to 16x16; two epochs at 0.01 before 0.1, as the paper's warm-up (without it, at lr 0.1
    # from the first step and flax's default BatchNorm momentum, ResNet-56 failed to train at this scale)
    config_lib.local(config, image_size=16, batch_size=128, num_epochs=30, learning_rate=0.1)
    config.warmup_epochs, config.warmup_type, config.warmup_lr = 2.0, "constant", 0.01
  return config_lib.finish(config)
