"""Fine-tuning a pretrained network on your own images, or (`local`) a transfer task that runs offline.

    python -m cnnjax.main --config=configs/finetune.py:resnet50 --config.init_from=resnet50-0676ba61.pth \\
        --config.dataset=imagefolder:/path/to/images                # any name in cnnjax.models.pretrained.TORCHVISION
    python -m cnnjax.main --config=configs/finetune.py:resnet50 ... --config.trainable=head   # linear probing

ARG is the network: its torchvision layout (what its ImageNet weights were trained in), initialised from
`init_from` (torchvision's .pth / .safetensors, or a workdir from cnnjax.convert or from training); the classifier
starts afresh for the folder's classes. Recipe (the usual transfer one, not a paper's): SGD momentum 0.9 at a tenth
of ImageNet's rate (0.01 for batch 64), cosine decay over 15 epochs after one of warm-up, weight decay 1e-4,
ImageNet crops at 224. Hardware: one GPU for a few thousand images.

    python -m cnnjax.main --config=configs/finetune.py:local,pretrain --workdir=runs/digits-0to4
    python -m cnnjax.main --config=configs/finetune.py:local --config.init_from=runs/digits-0to4

`local`: LeNet-5 (a dense head) learns digits 0-4 from all their 734 training images (`pretrain`, about a minute
on 2 CPU cores), then digits 5-9 from 10 examples each, starting from it. `python -m cnnjax.experiments.transfer`
measures that against the same budget from scratch and against a linear probe, over seeds (docs/experiments.md).
"""

import ml_collections

from cnnjax import config as config_lib
from cnnjax.models import pretrained

SOURCE, TARGET, SHOTS = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), 10


def local(pretrain: bool) -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.model, config.dataset, config.channels = "lenet5", "digits", 1
  config.model_options.head = "dense"  # the RBF output knows the ten digits only; a new task needs a new head
  config_lib.local(config, image_size=32, batch_size=50, num_epochs=30 if pretrain else 40, learning_rate=0.05)
  config.classes, config.shots = (SOURCE, 0) if pretrain else (TARGET, SHOTS)
  config.eval_every_epochs = 5.0
  return config


def get_config(arg: str = "resnet50") -> ml_collections.ConfigDict:
  args = [a for a in arg.split(",") if a]
  if args[:1] == ["local"] and set(args[1:]) <= {"pretrain"}:
    return config_lib.finish(local(pretrain="pretrain" in args))
  if len(args) != 1 or args[0] not in pretrained.TORCHVISION:
    raise ValueError(
      f"finetune config argument {arg!r}: write NETWORK (one of {', '.join(pretrained.TORCHVISION)}), "
      "local or local,pretrain"
    )
  config = config_lib.base()
  config.model = args[0]
  config.model_options.update(pretrained.TORCHVISION[config.model])
  config.dataset = ""  # --config.dataset=imagefolder:/path
  config.batch_size = 64
  config.learning_rate = 0.01
  config.weight_decay = 1e-4
  config.schedule = "cosine"
  config.num_epochs = 15
  config.warmup_epochs = 1.0
  config.log_every_steps = 20
  return config_lib.finish(config)
