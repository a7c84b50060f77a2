"""VGG (Simonyan & Zisserman 2014) on ImageNet: `:DEPTH[,bn][,local]` with DEPTH in 11, 13, 16, 19.

    python -m cnnjax.main --config=configs/vgg.py:16           # configuration D
    python -m cnnjax.main --config=configs/vgg.py:19,bn        # E with BatchNorm (torchvision's vgg19_bn)
    python -m cnnjax.main --config=configs/vgg.py:16,local     # offline on `digits`, 32x32, CPU

Dataset: imagenet2012 prepared as array_record (docs/data.md). Hardware: a multi-GPU host or TPU slice;
the paper took 2-3 weeks on four Titan Blacks. Recipe (section 3.1): batch 256, momentum 0.9, weight
decay 5e-4, dropout 0.5 on fc6/fc7, lr 0.01 divided by 10 three times on plateaus (here at epochs 30,
50, 65), 74 epochs; Glorot initialisation, which the paper found removes the need to start from net A.
Data (`augment='vgg'`): multi-scale training, shorter side S in [256, 512], random 224 crops, mirrors, AlexNet's
colour shift. Test (section 3.2): dense, fc layers as convolutions over the whole image at Q = 256, 384, 512 and
its mirror: `--mode=eval --workdir=W --config.eval_protocol=dense` (docs/protocols.md).
Paper (Table 4, trained at S in [256, 512], dense at Q = 256, 384, 512): D 24.8% top-1 / 7.5% top-5 error, E 24.8%
/ 7.5%; torchvision's single centre crop: vgg16 28.4% / 9.6%, vgg19 27.6% / 9.1%.
"""

import ml_collections

from cnnjax import config as config_lib


def get_config(arg: str = "16") -> ml_collections.ConfigDict:
  args = [a for a in arg.split(",") if a]
  depth = args[0] if args else "16"
  if depth not in ("11", "13", "16", "19") or set(args[1:]) - {"bn", "local"}:
    raise ValueError(f"vgg config argument {arg!r}: write DEPTH[,bn][,local] with DEPTH 11, 13, 16 or 19")
  config = config_lib.base()
  config.model = f"vgg{depth}" + ("_bn" if "bn" in args else "")
  config.dataset = "imagenet2012"
  config.batch_size = 256
  config.learning_rate = 0.01
  config.weight_decay = 5e-4
  config.num_epochs = 74
  config.lr_decay_epochs = (30, 50, 65)
  config.augment = "vgg"
  config.eval_scales = (256, 384, 512)
  if "local" in args:
    config.model_options.global_pool = True  # 512 inputs to fc6 instead of 25,088
    config_lib.local(config, image_size=32, learning_rate=0.01)
  return config_lib.finish(config)
