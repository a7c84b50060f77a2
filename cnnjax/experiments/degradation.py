"""The degradation problem (He et al. 2015, Fig. 1 and Fig. 6): deeper plain nets train *worse*; ResNets do not.

    python -m cnnjax.experiments.degradation --dataset=digits --depths=20,56     # offline, 9 min here
    python -m cnnjax.experiments.degradation --dataset=cifar10 --depths=20,32,44,56   # the paper's recipe

Trains plain-N and ResNet-N for every depth with one recipe (configs/cifar_resnet.py; its `local` variant on
digits), each in WORKDIR/plainN or WORKDIR/resnetN: rerunning skips finished runs and resumes unfinished
ones from their checkpoints. Writes WORKDIR/degradation.png (training error bold, test error thin, against
iterations, one panel per family, in the paper's style) and degradation.json / .csv (final errors).
"""
import csv
import json

from absl import app, flags, logging
from etils import epath

from cnnjax import config as config_lib
from cnnjax import data, metrics, train

FLAGS = flags.FLAGS


def run_config(depth: int, residual: bool, dataset: str):
  arg = f"{depth}" + ("" if residual else ",plain") + (",local" if dataset == "digits" else "")
  return config_lib.load("cifar_resnet", arg)


def final_errors(workdir) -> dict:
  """Training error over the last logged interval and the last test error, in percent."""
  lines = metrics.read_metrics(epath.Path(workdir) / "metrics.jsonl")
  last_train = [l for l in lines if "train_accuracy" in l][-1]
  last_eval = [l for l in lines if "eval_accuracy" in l][-1]
  return {"step": last_eval["step"], "train_error": 100 * (1 - last_train["train_accuracy"]),
          "test_error": 100 * (1 - last_eval["eval_accuracy"])}  # fmt: skip


def run(dataset: str, depths: list[int], workdir: str, epochs: float = 0, data_dir: str = "", **overrides) -> list[dict]:
  """Train (or skip, or resume) every net; write the figure and the tables; return the table's rows."""
  workdir = epath.Path(workdir)
  rows = []
  for residual in (False, True):
    for depth in depths:
      name = f"{'resnet' if residual else 'plain'}{depth}"
      config = run_config(depth, residual, dataset)
      config.data_dir = data_dir
      if epochs:
        config.num_epochs, config.num_steps = epochs, 0
      config.update(overrides)
      if (workdir / name / "summary.json").exists():
        print(f"{name}: finished already in {workdir / name}", flush=True)
      else:
        train.train_and_evaluate(config, str(workdir / name))
      rows.append({"net": name, "depth": depth, "residual": residual, **final_errors(workdir / name)})
  (workdir / "degradation.json").write_text(json.dumps(rows, indent=1))
  with (workdir / "degradation.csv").open("w") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  plot(workdir, rows, dataset)
  return rows


def plot(workdir, rows, dataset):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, residual in zip(axes, (False, True)):
    for i, row in enumerate(r for r in rows if r["residual"] == residual):
      lines = metrics.read_metrics(workdir / row["net"] / "metrics.jsonl")
      train_lines = [l for l in lines if "train_accuracy" in l]
      test_lines = [l for l in lines if "eval_accuracy" in l]
      color = f"C{i}"
      ax.plot([l["step"] for l in train_lines], [100 * (1 - l["train_accuracy"]) for l in train_lines], color=color,
              linewidth=2.2, label=f"{row['net']} train")  # fmt: skip
      ax.plot([l["step"] for l in test_lines], [100 * (1 - l["eval_accuracy"]) for l in test_lines], color=color,
              linewidth=0.9, linestyle="--", label=f"{row['net']} test")  # fmt: skip
    ax.set(title=f"{'ResNet' if residual else 'plain'} on {dataset}", xlabel="iterations", ylabel="error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(str(workdir / "degradation.png"), dpi=100)
  plt.close(fig)


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  flags.DEFINE_enum("dataset", "digits", ["digits", "cifar10"], "digits: offline, reduced schedule; cifar10: the paper's.")
  flags.DEFINE_list("depths", ["20", "56"], "Depths 6n+2 to train, plain and residual.")
  flags.DEFINE_string("workdir", None, "Default: runs/degradation-DATASET.")
  flags.DEFINE_float("epochs", 0, "Override the recipe's length in epochs (0: keep it).")
  flags.DEFINE_string("data_dir", "", "tfds data directory.")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  workdir = FLAGS.workdir or f"runs/degradation-{FLAGS.dataset}"
  try:
    rows = run(FLAGS.dataset, [int(d) for d in FLAGS.depths], workdir, FLAGS.epochs, FLAGS.data_dir)
  except (ValueError, data.DatasetError, train.TrainingDiverged) as e:
    raise SystemExit(f"error: {e}") from None
  print("\n| net | train error (%) | test error (%) |\n|---|---|---|")
  for row in rows:
    print(f"| {row['net']} | {row['train_error']:.1f} | {row['test_error']:.1f} |")
  print(f"\nwrote {workdir}/degradation.png, degradation.json, degradation.csv")


if __name__ == "__main__":
  define_flags()
  app.run(main)
