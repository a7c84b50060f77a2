"""ImageNet ResNets (He et al. 2015): `:DEPTH[,plain][,local]` with DEPTH in 18, 34, 50, 101, 152.

    python -m cnnjax.main --config=configs/resnet.py:50          # ResNet-50, option B, stride in the 1x1 (v1)
    python -m cnnjax.main --config=configs/resnet.py:34,plain    # the plain-34 baseline of Table 2
    python -m cnnjax.main --config=configs/resnet.py:50 --config.model_options.stride_in=v1.5
    python -m cnnjax.main --config=configs/resnet.py:152 --config.model_options.remat=blocks   # less memory
    python -m cnnjax.main --config=configs/resnet.py:18,local    # offline on `digits`, 32x32, CPU

Dataset: imagenet2012 prepared as array_record (docs/data.md). Hardware: an 8-GPU host or a TPU v4-8 or
larger. Recipe (section 3.4): batch 256, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 when
the error plateaus (here at epochs 30 and 60 of 90, torchvision's reproduction), no dropout, He init.
Data (`augment='resnet'`): shorter side S in [256, 480], random 224 crops, mirrors, AlexNet's colour shift.
Test: ten crops (`--config.eval_protocol=ten_crop`) or fully convolutional at 224, 256, 384, 480, 640
(`--config.eval_protocol=dense`), each with `--mode=eval --workdir=W` (docs/protocols.md).
Paper (10-crop, Table 3): ResNet-34 B 24.52% top-1, ResNet-50 22.85% / 6.71%, ResNet-152 21.43% / 5.71%;
plain-34 28.54% (Table 2); dense multi-scale (Table 4): ResNet-152 19.38% / 4.49%. Single centre crop [KH]:
ResNet-50 24.7% / 7.8%.
"""

import ml_collections

from cnnjax import config as config_lib


def get_config(arg: str = "50") -> ml_collections.ConfigDict:
  args = [a for a in arg.split(",") if a]
  depth = args[0] if args else "50"
  if depth not in ("18", "34", "50", "101", "152") or set(args[1:]) - {"plain", "local"}:
    raise ValueError(f"resnet config argument {arg!r}: write DEPTH[,plain][,local] with DEPTH 18, 34, 50, 101 or 152")
  config = config_lib.base()
  config.model = ("plain" if "plain" in args else "resnet") + depth
  config.dataset = "imagenet2012"
  config.batch_size = 256
  config.learning_rate = 0.1
  config.weight_decay = 1e-4
  config.num_epochs = 90
  config.lr_decay_epochs = (30, 60)
  config.augment = "resnet"
  config.eval_scales = (224, 256, 384, 480, 640)
  if "local" in args:
    config_lib.local(config, image_size=32, learning_rate=0.05)
  return config_lib.finish(config)
