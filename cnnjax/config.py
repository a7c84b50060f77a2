"""The fields every config has, with their defaults, and the `local` mode that shrinks any config to a CPU run.

Config files (configs/*.py) start from `base()` and set what their paper prescribes; every field can be
overridden on the command line (`--config.learning_rate=0.05`). Unknown fields and values of the wrong
type are refused by ml_collections before anything runs.
"""

import difflib
import importlib.util
import math
import pathlib
import re
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

# The repository's configs/ folder (cnnjax is installed editable from the repository, as README says).
CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def base() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ""
  config.model_options = ml_collections.ConfigDict()  # the model's options; finish() lists them all
  config.dataset = ""
  config.data_dir = ""  # tfds data directory; empty: TFDS_DATA_DIR or ~/tensorflow_datasets
  config.image_size = 224
  config.channels = 3
  # the training recipe (cnnjax/data/recipes.py): alexnet | vgg | resnet | inception (the default: any photos) for
  # ImageNet-style photos, cifar for CIFAR-style images, none
  config.augment = "inception"
  config.workers = 0  # grain worker processes (image decoding); 0 reads in a background thread
  config.classes = ()  # a subset of the dataset's classes (label indices, renumbered 0.. in this order); (): all
  config.shots = 0  # the first `shots` training examples of each class; 0: all (few-shot transfer tasks)
  config.bad_images = "skip"  # imagefolder: 'skip' files that cannot be decoded, with a warning, or 'stop' at them
  config.seed = 0
  config.init_from = ""  # start from these weights: a cnnjax workdir, or torchvision's .pth / .safetensors
  config.trainable = "all"  # or 'head': only the classifier trains, on the frozen body's features (linear probing)

  config.batch_size = 256  # global, over all devices and hosts
  config.num_epochs = 90.0
  config.num_steps = 0  # when set, overrides num_epochs

  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.schedule = "step"  # constant | step | exponential | cosine
  config.lr_decay_factor = 0.1
  config.lr_decay_epochs = (30, 60)  # for 'step', unless lr_decay_steps is set
  config.lr_decay_steps = ()
  config.lr_decay_every_epochs = 0.0  # for 'exponential'
  config.warmup_epochs = 0.0
  config.warmup_steps = 0
  config.warmup_type = "linear"  # linear (from 0) | constant (at warmup_lr)
  config.warmup_lr = 0.0
  config.label_smoothing = 0.0
  config.aux_loss_weight = 0.3  # GoogLeNet's auxiliary classifiers
  config.dtype = "float32"  # or bfloat16: bf16 compute, fp32 parameters, fp32 logits and loss; float64 (checks of the
  #                     arithmetic itself, with JAX_ENABLE_X64=1): everything in float64

  config.log_every_steps = 100
  config.eval_every_epochs = 1.0
  config.eval_every_steps = 0  # when set, overrides eval_every_epochs
  # the test's views, softmax averaged over them: center | ten_crop (AlexNet's) | googlenet144 | dense (the whole
  # image at each of eval_scales and mirrored; docs/protocols.md)
  config.eval_protocol = "center"
  config.eval_scales = (256, 384, 512)  # dense: the shorter sides, for a 224 input (VGG's; ResNet's in its config)
  config.checkpoint_every_steps = 0  # 0: at every evaluation
  config.keep_checkpoints = 3
  return config


def input_shape(config) -> tuple[int, int, int]:
  """(H, W, C) of the images the config's model takes."""
  return (config.image_size, config.image_size, config.channels)


def load(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """configs/NAME.py's get_config(arg), as `--config=configs/NAME.py:ARG` gives it, unlocked."""
  return load_file(CONFIGS / f"{name}.py", arg)


def load_file(path, arg: str = "") -> ml_collections.ConfigDict:
  """The get_config(arg) of the config file at `path`."""
  spec = importlib.util.spec_from_file_location(f"configs.{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def from_workdir(workdir: str, overrides=()) -> ml_collections.ConfigDict:
  """The config a workdir's run was made with (its config.json), as a config file would give it, with
  `--config.FIELD=VALUE` `overrides` of what evaluating it may change (the dataset, the batch size, ...)."""
  import json

  from cnnjax import data
  from cnnjax import workdir as workdir_lib

  path = workdir_lib.resolve(workdir) / "config.json"
  if not path.exists():
    raise ValueError(f"{workdir} has no config.json: give the run's --config (or a cnnjax workdir)")
  saved, config = json.loads(path.read_text()), base()
  unknown = sorted(set(saved) - set(config))
  if unknown:
    raise ValueError(f"{path} has field(s) this version does not know: {', '.join(unknown)}; give the run's --config")
  if isinstance(saved.get("augment"), bool):  # workdirs made before recipes had names
    saved["augment"] = OLD_AUGMENT[data.style(saved["dataset"])] if saved["augment"] else "none"
  for field, value in saved.items():
    if field != "model_options":
      config[field] = tuple(value) if isinstance(config[field], tuple) else value
  config.model_options = ml_collections.ConfigDict(
    {k: tuple(v) if isinstance(v, list) else v for k, v in saved["model_options"].items()}
  )
  for override in overrides:
    _override(config, override)
  return finish(config)


# What `augment = True` meant, per dataset style, before the recipes had names
OLD_AUGMENT = {"imagenet": "inception", "cifar": "cifar", "small": "none"}


# What reading a workdir's checkpoints needs the same: the network and what its outputs mean. The dataset, the
# input size and the batch may differ (another test set with the same classes).
NETWORK_FIELDS = ("model", "model_options", "classes", "channels")


def _override(config: ml_collections.ConfigDict, override: str):
  """Apply `--config.FIELD=VALUE` to a workdir's config, the value read as the field's type."""
  import ast

  field, _, text = override.removeprefix("--config.").partition("=")
  if field.split(".")[0] in NETWORK_FIELDS:
    raise ValueError(
      f"--config.{field}: a workdir is evaluated as the network it trained; give a --config to change it"
    )
  if field not in config:
    close = difflib.get_close_matches(field, list(config.keys()), n=1)
    raise ValueError(f"unknown field {field}" + (f" (did you mean {close[0]}?)" if close else ""))
  current = config[field]
  try:
    if isinstance(current, bool):
      value = {"true": True, "false": False}[text.lower()]
    elif isinstance(current, (int, float, tuple)):
      value = type(current)(ast.literal_eval(text))
    else:
      value = text
  except (ValueError, SyntaxError, KeyError, TypeError):
    raise ValueError(f"--config.{field}={text}: not a {type(current).__name__}") from None
  config[field] = value


# (lowest, highest) of the numeric fields; None: unbounded on that side. Where an end is excluded, `validate` says so.
# Step counts stay below 2**31 (the step counter is an int32 on the devices), epoch counts below a million.
STEPS, EPOCHS = 2**31, 10**6
RANGES = {
  "image_size": (1, None),
  "shots": (0, None),
  "workers": (0, None),
  "seed": (0, None),
  "batch_size": (1, None),
  "num_epochs": (0, EPOCHS),
  "num_steps": (0, STEPS),
  "learning_rate": (0, None),
  "momentum": (0, 1),
  "weight_decay": (0, None),
  "lr_decay_factor": (0, None),
  "lr_decay_every_epochs": (0, EPOCHS),
  "warmup_epochs": (0, EPOCHS),
  "warmup_steps": (0, STEPS),
  "warmup_lr": (0, None),
  "label_smoothing": (0, 1),
  "aux_loss_weight": (0, None),
  "log_every_steps": (1, STEPS),
  "eval_every_epochs": (0, EPOCHS),
  "eval_every_steps": (0, STEPS),
  "checkpoint_every_steps": (0, STEPS),
  "keep_checkpoints": (1, None),
}
CHOICES = {
  "channels": (1, 3),
  "schedule": ("constant", "step", "exponential", "cosine"),
  "warmup_type": ("linear", "constant"),
  "dtype": ("float32", "bfloat16", "float64"),
  "bad_images": ("skip", "stop"),
  "trainable": ("all", "head"),
  "eval_protocol": ("center", "ten_crop", "googlenet144", "dense"),
  "augment": ("alexnet", "vgg", "resnet", "inception", "cifar", "none"),  # cnnjax/data/recipes.py
}


def validate(config) -> None:
  """ValueError naming the field for a value no run can use: out of range, not finite, not one of the choices,
  or nothing to train. (Model options are checked by the model, dataset names by cnnjax.data.)"""
  for field, (low, high) in RANGES.items():
    value = config[field]
    if not math.isfinite(value) or value < low or (high is not None and value >= high):
      bound = f"at least {low}" + (f" and below {high}" if high is not None else "")
      raise ValueError(f"{field}={value} is out of range: it must be {bound}")
  for field, allowed in CHOICES.items():
    if config[field] not in allowed:
      raise ValueError(f"unknown {field} {config[field]!r}; valid: {', '.join(map(str, allowed))}")
  for field, high in (("lr_decay_epochs", EPOCHS), ("lr_decay_steps", STEPS)):
    if any(not math.isfinite(v) or not 0 <= v < high for v in config[field]):
      raise ValueError(f"{field}={_show(config[field])} must list numbers from 0 to below {high}")
  if (config.eval_protocol == "dense" and not config.eval_scales) or any(q < 224 for q in config.eval_scales):
    raise ValueError(
      f"eval_scales={_show(config.eval_scales)} must list shorter sides of at least 224 (for a 224 input; smaller "
      "than the training crops leave fc6 no whole window)"
    )
  if not (config.num_steps or config.num_epochs):
    raise ValueError("num_steps and num_epochs are both 0: there is nothing to train")
  import jax  # (here: the sweep driver reads configs without importing JAX)

  if config.dtype == "float64" and not jax.config.jax_enable_x64:
    raise ValueError("dtype float64 needs JAX's 64-bit mode: set JAX_ENABLE_X64=1")
  if config.schedule == "exponential" and not config.lr_decay_every_epochs:
    raise ValueError("schedule 'exponential' needs lr_decay_every_epochs (how often the rate decays)")


def finish(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with every option of its model in model_options, at its default unless the config chose it, so that
  any option can be overridden on the command line (`--config.model_options.widths=(8,16,32)`) and config.json
  records the whole model. Every config file returns through this."""
  from cnnjax import models  # here: the flag parser below needs none of it

  every = models.defaults(config.model)
  unknown = sorted(set(config.model_options) - set(every))
  if unknown:
    raise ValueError(f"model {config.model!r} has no option(s) {', '.join(unknown)}; valid: {', '.join(every)}")
  config.model_options = ml_collections.ConfigDict({**every, **config.model_options})
  return config


def local(
  config: ml_collections.ConfigDict,
  image_size: int = 32,
  batch_size: int = 64,
  num_epochs: float = 10,
  learning_rate: float | None = None,
) -> ml_collections.ConfigDict:
  """The same model on the bundled `digits` dataset, at a small input size, with a CPU-sized schedule."""
  config.dataset = "digits"
  config.image_size = image_size
  config.batch_size = batch_size
  config.num_epochs = num_epochs
  config.num_steps = 0
  config.schedule = "cosine"
  config.warmup_epochs = 1.0
  config.warmup_steps = 0
  config.warmup_type = "linear"
  if learning_rate is not None:
    config.learning_rate = learning_rate
  config.log_every_steps = 10
  config.eval_every_epochs = 1.0
  config.eval_every_steps = 0
  config.workers = 0
  return config


# Fields that set one thing two ways: the `_steps` one wins when set (non-zero), so a config sets one of each
# pair and leaves the other 0 or ().
ALTERNATIVES = (
  ("num_steps", "num_epochs"),
  ("eval_every_steps", "eval_every_epochs"),
  ("lr_decay_steps", "lr_decay_epochs"),
  ("warmup_steps", "warmup_epochs"),
)


def from_command_line(config_flag) -> ml_collections.ConfigDict:
  """The config a `--config=FILE[:ARG] --config.FIELD=VALUE ...` flag gives, with its overrides meaning what they
  say (resolve_overrides); its notes are printed."""
  config = config_flag.value
  for note in resolve_overrides(config, config_flags.get_override_values(config_flag)):
    print(f"note: {note}", flush=True)
  return config


def resolve_overrides(config, overridden) -> list[str]:
  """Make command-line overrides win over the config file, and refuse the ones that would change nothing.

  - Of a pair in ALTERNATIVES, the member given on the command line replaces what the config set for the
    other (`--config.num_epochs=6` on a config of 64,000 steps trains 6 epochs, and says so); giving both is
    refused.
  - An override of a field that the rest of the config makes inert (`--config.warmup_lr` without a constant
    warm-up, `--config.lr_decay_epochs` on a cosine schedule) is refused, saying why.
  Returns the notes to show; raises ValueError for what is refused.
  """
  overridden, notes = set(overridden), []
  for steps, epochs in ALTERNATIVES:
    given = [f for f in (steps, epochs) if f in overridden and config[f]]
    if len(given) == 2:
      raise ValueError(
        f"--config.{steps}={_show(config[steps])} and --config.{epochs}={_show(config[epochs])} "
        "set the same thing two ways; give one of them"
      )
    if given:
      other = epochs if given[0] == steps else steps
      if config[other] and other == steps:  # steps win when both are set: say so where that is overturned
        notes.append(f"--config.{epochs}={_show(config[epochs])} replaces the config's {steps}={_show(config[steps])}")
      config[other] = type(config[other])()  # 0, 0.0 or (): config.json then says what ran
  for field, why in inert(config).items():
    if field in overridden:
      value = config[field] if "." not in field else config.model_options[field.split(".", 1)[1]]
      raise ValueError(f"--config.{field}={_show(value)} would change nothing: {why}")
  return notes


def _show(value) -> str:
  return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def inert(config) -> dict[str, str]:
  """The fields whose value this config ignores, each with the reason."""
  from cnnjax import data, models  # here: configs import this module, and need neither

  found = {}
  if config.schedule != "step":
    for f in ("lr_decay_steps", "lr_decay_epochs"):
      found[f] = f"the schedule is {config.schedule!r}; decay steps belong to schedule 'step'"
  if config.schedule not in ("step", "exponential"):
    found["lr_decay_factor"] = f"the schedule is {config.schedule!r}; the factor belongs to 'step' and 'exponential'"
  if config.schedule != "exponential":
    found["lr_decay_every_epochs"] = f"the schedule is {config.schedule!r}, not 'exponential'"
  if not (config.warmup_steps or config.warmup_epochs):
    for f in ("warmup_type", "warmup_lr"):
      found[f] = "there is no warm-up (set warmup_epochs or warmup_steps)"
  elif config.warmup_type != "constant":
    found["warmup_lr"] = f"the warm-up is {config.warmup_type!r} (from 0); warmup_lr belongs to warmup_type 'constant'"
  if not config.momentum:
    found["nesterov"] = "momentum is 0"
  aux = "aux_heads" in models.options(config.model) and config.model_options.get("aux_heads", True)
  if not aux:
    found["aux_loss_weight"] = f"model {config.model!r} is built without auxiliary classifiers"
  if config.eval_protocol != "dense":
    found["eval_scales"] = f"the eval_protocol is {config.eval_protocol!r}; scales belong to 'dense'"
  if data.style(config.dataset) == "small":
    found["augment"] = f"dataset {config.dataset!r} is never augmented (it is only resized or padded to the model)"
  if not config.dataset.startswith("imagefolder:"):
    found["bad_images"] = f"dataset {config.dataset!r} is not an image folder"
  if not data.uses_data_dir(config.dataset):
    found["data_dir"] = f"dataset {config.dataset!r} is not read from a tfds data directory"
  return found


def parse_flags(argv):
  """absl's flag parsing, with a config file that does not exist, a bad config override (an unknown field, a wrong
  type) or a config file's own error as one clear line."""
  given = dict(
    a[2:].split("=", 1) for a in argv if a.startswith("--config=") or (a.startswith("--config.") and "=" in a)
  )
  if "config" in given:
    _check_exists(given["config"])
  # without a config file, overrides are for the workdir's own config (--mode=eval): past absl, to the command
  unclaimed = [] if "config" in given or "config" not in flags.FLAGS else [a for a in argv if a.startswith("--config.")]
  try:
    return flags.FLAGS([a for a in argv if a not in unclaimed]) + unclaimed
  except flags.Error as e:
    lines = str(e).strip().splitlines()
    # a config file's own error arrives wrapped in its traceback: keep the first and the last line
    sys.exit(f"error: {lines[0]} {lines[-1]}" if "Traceback" in str(e) else f"error: {e}")
  except (AttributeError, KeyError, TypeError) as e:  # ml_collections' unknown field
    fields = [f.removeprefix("config.") for f in given if f != "config"]
    # the error names the unknown key alone: find the override that ends in it
    field = next((f for f in fields if re.search(rf"\b{re.escape(f.rsplit('.', 1)[-1])}\b", str(e))), None)
    if field is None:
      sys.exit(f"error: {' or '.join(fields)} is not a field of this config ({e})")
    sys.exit(f"error: unknown field {field}{_did_you_mean(given.get('config', ''), field)}")


def _check_exists(config_arg: str):
  """One line naming a --config file that does not exist, where it was looked for, and the configs that do."""
  path = config_arg.split(":", 1)[0]
  if pathlib.Path(path).exists():
    return
  where = pathlib.Path.cwd()
  names = sorted(p.name for p in CONFIGS.glob("*.py"))
  sys.exit(
    f"error: --config={config_arg}: {path} does not exist (looked for from {where}); the configs are "
    f"{', '.join(names)} in {CONFIGS}"
  )


def _did_you_mean(config_arg: str, field: str) -> str:
  """' (did you mean FIELD?)' with the config's closest field name, or '' when none is close (or it cannot load)."""
  path, _, arg = config_arg.partition(":")
  try:
    parent = load_file(path, arg)
  except Exception:  # the flag parser reports the file's own errors; a suggestion is only a help
    return ""
  *inside, name = field.split(".")
  for key in inside:
    parent = parent.get(key) if isinstance(parent, ml_collections.ConfigDict) else None
  close = difflib.get_close_matches(name, list(parent.keys()), n=1) if parent is not None else []
  return f" (did you mean {'.'.join([*inside, close[0]])}?)" if close else ""
