"""python -m cnnjax.main --config=configs/NAME.py[:ARG] [--config.FIELD=VALUE ...] [--workdir=DIR] [--mode=train|eval]
python -m cnnjax.main --mode=eval --workdir=DIR          # with the config the workdir was made with
python -m cnnjax.main --mode=eval --workdir=DIR1,DIR2    # an ensemble: the workdirs' softmax averaged
    [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]     # one of N processes of a run

Parses flags and calls cnnjax.train; everything else is importable and tested on its own.
"""

import datetime
import json
import os
import pathlib

from absl import app, flags
from ml_collections import config_flags

from cnnjax import cli, train
from cnnjax import config as config_lib
from cnnjax import workdir as workdir_lib

FLAGS = flags.FLAGS


def default_workdir(config_path: str) -> str:
  name = pathlib.Path(config_path.split(":")[0]).stem + (
    f"-{config_path.split(':', 1)[1]}" if ":" in config_path else ""
  )
  return os.path.join("runs", f"{name.replace(',', '-')}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lenet5.py or configs/resnet.py:50.", lock_config=True
  )
  flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints and metrics go; rerun with the same workdir to resume. Default: a new folder under ./runs/. "
    "With --mode=eval, several separated by commas are evaluated as an ensemble.",
  )
  flags.DEFINE_enum(
    "mode", "train", ["train", "eval"], "train (and evaluate), or evaluate the workdir's (workdirs') latest checkpoint."
  )
  cli.define_distributed_flags()


def main(argv):
  overrides = [a for a in argv[1:] if a.startswith("--config.")]  # of a workdir's own config: no --config given
  if unexpected := [a for a in argv[1:] if a not in overrides]:
    raise app.UsageError(f"unexpected arguments: {' '.join(unexpected)}")
  cli.start_distributed()
  cli.start()
  workdirs = FLAGS.workdir.split(",") if FLAGS.mode == "eval" and FLAGS.workdir else [FLAGS.workdir]
  if not FLAGS["config"].present:  # evaluating a workdir needs no config: it has its run's own
    if FLAGS.mode != "eval" or not FLAGS.workdir:
      raise app.UsageError(
        "--config is required (to evaluate a workdir with the config it was trained with: --mode=eval --workdir=DIR, "
        "and --config.FIELD=VALUE to change what evaluation may: the dataset, the batch size)"
      )
    configs = [config_lib.from_workdir(w, overrides) for w in workdirs]
  else:
    configs = [config_lib.from_command_line(FLAGS["config"])] * len(workdirs)
  if FLAGS.mode == "train":
    train.train_and_evaluate(configs[0], FLAGS.workdir or default_workdir(FLAGS["config"].config_filename))
  else:
    workdirs = [w or default_workdir(FLAGS["config"].config_filename) for w in workdirs]
    result = train.evaluate_ensemble(configs, workdirs)
    print(" ".join(_shown(k, v) for k, v in result.items()))
    _record(result, workdirs, configs[0])


def _record(result: dict, workdirs: list[str], config):
  """Append --mode=eval's result, with what was evaluated, to the (first) workdir's evaluations.jsonl."""
  import jax

  if jax.process_index() == 0:
    scales = {"eval_scales": list(config.eval_scales)} if config.eval_protocol == "dense" else {}
    line = {"workdirs": workdirs, "dataset": config.dataset, **scales, **result}
    workdir_lib.Appender(workdir_lib.resolve(workdirs[0]) / "evaluations.jsonl").append(
      (json.dumps(line) + "\n").encode()
    )


def _shown(name: str, value) -> str:
  """One field of --mode=eval's line: accuracies also as error rates, in percent."""
  if name in ("eval_accuracy", "eval_top5"):
    error = "top1_error" if name == "eval_accuracy" else "top5_error"
    return f"{name} {value:.4f} {error} {100 * (1 - value):.2f}%"
  return f"{name} {value:.4f}" if name.startswith("eval_") else f"{name} {value}"


if __name__ == "__main__":
  define_flags()
  cli.run(main)
