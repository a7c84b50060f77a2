"""AlexNet (Krizhevsky et al. 2012) on ImageNet with the paper's recipe.

    python -m cnnjax.main --config=configs/alexnet.py                 # paper layout: two towers, LRN, 227x227
    python -m cnnjax.main --config=configs/alexnet.py:torchvision     # torchvision's single tower, 224x224
    python -m cnnjax.main --config=configs/alexnet.py:local           # offline on `digits`, 64x64, CPU

Dataset: imagenet2012 prepared as array_record (docs/data.md). Hardware: one GPU or TPU host; the paper
trained 5-6 days on two GTX 580s. Recipe (section 5): SGD batch 128, momentum 0.9, weight decay 5e-4,
lr 0.01 divided by 10 three times "when the validation error rate stopped improving" (here at epochs
30, 60, 80 of 90), dropout 0.5, weights N(0, 0.01) and biases of 1 in conv2/4/5 and fc6/7. Data (section
4.1, `augment='alexnet'`): shorter side 256, the central 256x256, random 227 (224) crops and mirrors, PCA lighting.
Paper: 40.7% top-1 / 18.2% top-5 error on ILSVRC-2012 val, one CNN, ten crops: evaluate a run that way with
`--mode=eval --workdir=W --config.eval_protocol=ten_crop` (the run's own evaluations take one centre crop, which
gives torchvision's weights 43.5% / 20.9%; docs/protocols.md).
"""

import ml_collections

from cnnjax import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.model, config.dataset = "alexnet", "imagenet2012"
  config.image_size = 227
  config.batch_size = 128
  config.learning_rate = 0.01
  config.weight_decay = 5e-4
  config.num_epochs = 90
  config.lr_decay_epochs = (30, 60, 80)
  config.augment = "alexnet"
  args = set(filter(None, arg.split(",")))
  if "torchvision" in args:
    config.model, config.image_size = "alexnet_torchvision", 224
  if "local" in args:
    config.model_options.global_pool = True  # a 256-input classifier: fc6's 9216 inputs are for 6x6 maps
    config_lib.local(config, image_size=64, learning_rate=0.01)
  if args - {"torchvision", "local"}:
    raise ValueError(
      f"unknown alexnet config argument(s) {sorted(args - {'torchvision', 'local'})}; valid: torchvision, local"
    )
  return config_lib.finish(config)
