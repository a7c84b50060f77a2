"""GoogLeNet / Inception v1 (Szegedy et al. 2014) on ImageNet, with its auxiliary classifiers.

    python -m cnnjax.main --config=configs/googlenet.py               # paper: LRN, true 5x5, aux heads
    python -m cnnjax.main --config=configs/googlenet.py:torchvision   # BatchNorm, 3x3 "5x5" branch
    python -m cnnjax.main --config=configs/googlenet.py:local         # offline on `digits`, 32x32, CPU

Dataset: imagenet2012 prepared as array_record (docs/data.md). Hardware: a multi-GPU host or TPU slice
(the paper: "a few high-end GPUs within a week"). Recipe (section 6): SGD momentum 0.9, learning rate
decreased 4% every 8 epochs, auxiliary losses weighted 0.3. Data (`augment='inception'`): crops of 8%-100% of
the area at aspect 3/4-4/3, the interpolation drawn among four, mirrors, photometric distortions (ours: the paper
gives none). The paper gives neither batch size, base rate, weight decay nor length: batch 256, lr 0.08, weight
decay 2e-4 and 60 epochs here are our choices, not the paper's. Polyak averaging is not used.
Paper (Table 3, one model): 10.07% top-5 error with one crop, 9.15% with ten, 7.89% with 144: evaluate a run with
`--mode=eval --workdir=W --config.eval_protocol=googlenet144` (docs/protocols.md); torchvision's weights, one
crop: 30.2% top-1 / 10.5% top-5.
"""

import ml_collections

from cnnjax import config as config_lib


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.model, config.dataset = "googlenet", "imagenet2012"
  config.batch_size = 256
  config.learning_rate = 0.08
  config.weight_decay = 2e-4
  config.num_epochs = 60
  config.schedule = "exponential"
  config.lr_decay_factor = 0.96
  config.lr_decay_every_epochs = 8
  config.augment = "inception"
  args = set(filter(None, arg.split(",")))
  if "torchvision" in args:
    config.model = "googlenet_torchvision"
  if "local" in args:
    config_lib.local(config, image_size=32, learning_rate=0.02)
  if args - {"torchvision", "local"}:
    raise ValueError(
      f"unknown googlenet config argument(s) {sorted(args - {'torchvision', 'local'})}; valid: torchvision, local"
    )
  return config_lib.finish(config)
