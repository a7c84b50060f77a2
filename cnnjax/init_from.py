"""A run that starts from trained weights (`config.init_from`): a cnnjax workdir's latest checkpoint or
torchvision's weights for the config's model, placed in a fresh training state."""

import jax

from cnnjax import checkpoint
from cnnjax import config as config_lib
from cnnjax.models import pretrained


def start_from(state, config, model, num_classes: int):
  """`state` holding the weights and BatchNorm statistics of `config.init_from`. Where the source learned another
  task (another dataset or classes; ImageNet for torchvision's files), its classifiers mean other classes: they
  start afresh, and the run says so."""
  source, lead = config.init_from, jax.process_index() == 0
  if checkpoint.is_workdir(source):
    variables = checkpoint.latest_variables(source)
    theirs = config_lib.from_workdir(source)
    same_task = (theirs.dataset, tuple(theirs.classes)) == (config.dataset, tuple(config.classes))
  else:
    variables = pretrained.from_torchvision(config.model, source)[1]
    same_task = (config.dataset, tuple(config.classes)) == ("imagenet2012", ())
    differ = {k: v for k, v in pretrained.TORCHVISION[config.model].items() if config.model_options[k] != v}
    if differ and lead:  # the same shapes, another computation: allowed, but said
      changes = ", ".join(f"{k}={v!r}" for k, v in differ.items())
      keep = f"--config.model_options.{next(iter(differ))}=..."
      print(f"note: torchvision's {config.model} has {changes}; this config changes it: {keep} to keep it", flush=True)
  new_head = () if same_task else pretrained.heads(model, state.params)
  merged = pretrained.merge({"params": state.params, "batch_stats": state.batch_stats}, variables, new_head)
  if lead:
    fresh = f"; new {', '.join(new_head)} for {num_classes} classes of {config.dataset}" if new_head else ""
    print(f"note: started from {source}{fresh}", flush=True)
  return state.replace(params=merged["params"], batch_stats=merged["batch_stats"])
