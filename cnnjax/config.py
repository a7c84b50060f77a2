"""The fields every config has, with their defaults, and the `local` mode that shrinks any config to a CPU run.

Config files (configs/*.py) start from `base()` and set what their paper prescribes; every field can be
overridden on the command line (`--config.learning_rate=0.05`). Unknown fields and values of the wrong
type are refused by ml_collections before anything runs.
"""
import importlib.util
import pathlib
import sys

import ml_collections
from absl import flags

# The repository's configs/ folder (cnnjax is installed editable from the repository, as README says).
CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ""
  c.model_options = ml_collections.ConfigDict()  # any option of the model, e.g. activation, norm, shortcut
  c.dataset = ""
  c.data_dir = ""  # tfds data directory; empty: TFDS_DATA_DIR or ~/tensorflow_datasets
  c.image_size = 224
  c.channels = 3
  c.augment = True
  c.workers = 0  # grain worker processes (image decoding); 0 reads in a background thread
  c.seed = 0

  c.batch_size = 256  # global, over all devices and hosts
  c.num_epochs = 90.0
  c.num_steps = 0  # when set, overrides num_epochs

  c.learning_rate = 0.1
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4
  c.schedule = "step"  # constant | step | exponential | cosine
  c.lr_decay_factor = 0.1
  c.lr_decay_epochs = (30, 60)  # for 'step', unless lr_decay_steps is set
  c.lr_decay_steps = ()
  c.lr_decay_every_epochs = 0.0  # for 'exponential'
  c.warmup_epochs = 0.0
  c.warmup_steps = 0
  c.warmup_type = "linear"  # linear (from 0) | constant (at warmup_lr)
  c.warmup_lr = 0.0
  c.label_smoothing = 0.0
  c.aux_loss_weight = 0.3  # GoogLeNet's auxiliary classifiers
  c.dtype = "float32"  # or bfloat16: bf16 compute, fp32 parameters, fp32 logits and loss

  c.log_every_steps = 100
  c.eval_every_epochs = 1.0
  c.eval_every_steps = 0  # when set, overrides eval_every_epochs
  c.checkpoint_every_steps = 0  # 0: at every evaluation
  c.keep_checkpoints = 3
  return c


def load(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """configs/NAME.py's get_config(arg), as `--config=configs/NAME.py:ARG` gives it, unlocked."""
  spec = importlib.util.spec_from_file_location(f"configs.{name}", CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def local(c: ml_collections.ConfigDict, image_size: int = 32, batch_size: int = 64, num_epochs: float = 10,
          learning_rate: float | None = None) -> ml_collections.ConfigDict:  # fmt: skip
  """The same model on the bundled `digits` dataset, at a small input size, with a CPU-sized schedule."""
  c.dataset = "digits"
  c.image_size = image_size
  c.batch_size = batch_size
  c.num_epochs = num_epochs
  c.num_steps = 0
  c.schedule = "cosine"
  c.warmup_epochs = 1.0
  c.warmup_steps = 0
  c.warmup_type = "linear"
  if learning_rate is not None:
    c.learning_rate = learning_rate
  c.log_every_steps = 10
  c.eval_every_epochs = 1.0
  c.eval_every_steps = 0
  c.workers = 0
  return c


def parse_flags(argv):
  """absl's flag parsing, with a bad config override (an unknown field, a wrong type) as one clear line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    # a config file's own error arrives wrapped in its traceback: keep the first and the last line
    sys.exit(f"error: {lines[0]} {lines[-1]}" if "Traceback" in str(e) else f"error: {e}")
  except (AttributeError, KeyError, TypeError) as e:  # ml_collections' unknown field
    fields = [a.split("=")[0][2:] for a in argv if a.startswith("--config.")]
    # the error names the unknown key alone: find the override that ends in it
    field = next((f for f in fields if repr(f.rsplit(".", 1)[-1]) in str(e)), " or ".join(fields))
    sys.exit(f"error: {field} is not a field of this config ({e}); see the config file for its fields")
