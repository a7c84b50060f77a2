"""python -m cnnjax.convert --model=NAME --weights=FILE --workdir=W

torchvision's ImageNet weights (a .pth file as torchvision downloads it, or .safetensors) as a cnnjax workdir:
the config that rebuilds the model (the family's config on imagenet2012, with torchvision's options) and an Orbax
checkpoint of step 0 holding the weights. Every command then reads it as one cnnjax trained:

    python -m cnnjax.main --mode=eval --workdir=W      # ImageNet validation accuracy (imagenet2012 prepared)
    python -m cnnjax.predict --workdir=W photo.jpg     # the five most probable classes
    --config.init_from=W                               # fine-tuning (configs/finetune.py)

NAME is one of cnnjax.models.pretrained.TORCHVISION: alexnet_torchvision, vgg11..vgg19(_bn), googlenet_torchvision,
resnet18..resnet152.
"""

import jax
from absl import app, flags

from cnnjax import checkpoint, cli, errors, models, optim, train
from cnnjax import config as config_lib
from cnnjax import workdir as workdir_lib
from cnnjax.models import pretrained

FLAGS = flags.FLAGS


def family_config(name: str):
  """The config of `name`'s family (configs/FAMILY.py:ARG) that builds torchvision's layer shapes."""
  family = pretrained.family(name)
  arg = {"alexnet": "torchvision", "googlenet": "torchvision"}.get(family)
  if arg is None:  # vgg16_bn -> 16,bn; resnet50 -> 50
    depth, *bn = name[len(family) :].split("_")
    arg = ",".join([depth, *bn])
  return config_lib.load(family, arg)


def convert(name: str, weights, workdir: str) -> dict:
  """Write `workdir` from torchvision's `weights` for `name`; returns its config (a ConfigDict)."""
  model, variables = pretrained.from_torchvision(name, weights)
  config = family_config(name)
  config.model_options.update({k: getattr(model, k) for k in models.defaults(name)})
  if model.num_classes != 1000:
    raise pretrained.WeightsError(
      f"these weights have {model.num_classes} classes, not ImageNet's 1000: train with "
      "--config.init_from=FILE on the dataset they belong to instead"
    )
  state = train.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=optim.sgd(config, optim.schedule(config, steps_per_epoch=1)),
  )
  with workdir_lib.claim(workdir):
    if checkpoint.is_workdir(workdir):
      raise errors.CheckpointError(f"{workdir} is a workdir already: choose a new --workdir for the converted weights")
    ckpt = checkpoint.Checkpointer(workdir, config)
    try:
      ckpt.save(0, state, {})  # no position in any data stream: a training from here starts at the beginning
      ckpt.wait()
    finally:
      ckpt.close()
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.start()
  convert(FLAGS.model, FLAGS.weights, FLAGS.workdir)
  count = sum(x.size for x in jax.tree.leaves(checkpoint.latest_variables(FLAGS.workdir)["params"]))
  print(
    f"wrote {FLAGS.workdir}: {FLAGS.model} ({count:,} parameters) from {FLAGS.weights}, as step 0 of a config on "
    f"imagenet2012.\n  evaluate: python -m cnnjax.main --mode=eval --workdir={FLAGS.workdir}\n"
    f"  predict:  python -m cnnjax.predict --workdir={FLAGS.workdir} IMAGE..."
  )


if __name__ == "__main__":
  flags.DEFINE_enum("model", None, list(pretrained.TORCHVISION), "The zoo's name of the network the weights are for.")
  flags.DEFINE_string("weights", None, "torchvision's weight file: .pth (needs the [torch] extra) or .safetensors.")
  flags.DEFINE_string("workdir", None, "The workdir to write (new).")
  flags.mark_flags_as_required(["model", "weights", "workdir"])
  cli.run(main)
