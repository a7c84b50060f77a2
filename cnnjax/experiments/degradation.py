"""The degradation problem (He et al. 2015, Fig. 1 and Fig. 6): deeper plain nets train *worse*; ResNets do not.

    python -m cnnjax.experiments.degradation --dataset=digits --depths=20,56     # offline
    python -m cnnjax.experiments.degradation --dataset=digits --depths=20,32,44,56 --seeds=0,1,2
    python -m cnnjax.experiments.degradation --dataset=cifar10 --depths=20,32,44,56   # the paper's recipe

Trains plain-N and ResNet-N for every depth and seed with one recipe (configs/cifar_resnet.py; its `local`
variant on digits), each in WORKDIR/plainN-sS or WORKDIR/resnetN-sS: rerunning skips finished runs and
resumes unfinished ones from their checkpoints. Writes WORKDIR/degradation.png (training error bold, test
error thin, against iterations, one panel per family, in the paper's style; one line per seed) and
degradation.json / .csv (final errors of every run).
"""

import json

from absl import flags
from etils import epath

from cnnjax import cli, metrics
from cnnjax import config as config_lib
from cnnjax import workdir as workdir_lib
from cnnjax.experiments import runs

FLAGS = flags.FLAGS


def run_config(depth: int, residual: bool, dataset: str, seed: int = 0):
  arg = f"{depth}" + ("" if residual else ",plain") + (",local" if dataset == "digits" else "")
  config = config_lib.load("cifar_resnet", arg)
  config.seed = seed  # initialisation, data order, augmentation
  return config


def run(
  dataset: str, depths: list[int], workdir: str, epochs: float = 0, data_dir: str = "", seeds=(0,), **overrides
) -> list[dict]:
  """Train (or skip, or resume) every net; write the figure and the tables; return the table's rows."""
  workdir = epath.Path(workdir)
  rows = []
  with workdir_lib.claim(workdir):  # one experiment per workdir; each run also owns its own folder
    for residual in (False, True):
      for depth in depths:
        for seed in seeds:
          net = f"{'resnet' if residual else 'plain'}{depth}"
          name = f"{net}-s{seed}"
          config = run_config(depth, residual, dataset=dataset, seed=seed)
          config.data_dir = data_dir
          if epochs:
            config.num_epochs, config.num_steps = epochs, 0
          config.update(overrides)
          runs.train_once(config, workdir / name)
          rows.append(
            {
              "run": name,
              "net": net,
              "depth": depth,
              "residual": residual,
              "seed": seed,
              **metrics.final_errors(workdir / name),
            }
          )
    (workdir / "degradation.json").write_text(json.dumps(rows, indent=1))
    metrics.write_csv(workdir / "degradation.csv", rows)
    plot(workdir, rows, dataset)
  return rows


def summary_table(rows: list[dict]) -> str:
  """Markdown: each net's final training and test error, the mean over seeds and, with several, the range."""
  lines = ["| net | seeds | training error (%) | test error (%) |", "|---|---|---|---|"]
  for net in dict.fromkeys(r["net"] for r in rows):
    runs = [r for r in rows if r["net"] == net]
    cells = []
    for key in ("train_error", "test_error"):
      values = [r[key] for r in runs]
      mean = sum(values) / len(values)
      cells.append(f"{mean:.1f}" + (f" ({min(values):.1f}-{max(values):.1f})" if len(values) > 1 else ""))
    lines.append(f"| {net} | {len(runs)} | {cells[0]} | {cells[1]} |")
  return "\n".join(lines)


def plot(workdir, rows, dataset):
  with metrics.figure(workdir / "degradation.png", 1, 2, figsize=(11, 4), sharey=True) as axes:
    for ax, residual in zip(axes, (False, True)):
      family = [r for r in rows if r["residual"] == residual]
      nets = list(dict.fromkeys(r["net"] for r in family))
      for row in family:
        lines = metrics.read_metrics(workdir / row["run"] / "metrics.jsonl")
        color, first_seed = f"C{nets.index(row['net'])}", row is next(r for r in family if r["net"] == row["net"])
        # training error bold, test error thin and dashed, as the paper draws them
        for key, which, style in (
          ("train_accuracy", "train", {"linewidth": 2.2}),
          ("eval_accuracy", "test", {"linewidth": 0.9, "linestyle": "--"}),
        ):
          points = [line for line in lines if key in line]
          label = f"{row['net']} {which}" if first_seed else None
          steps, errors = [line["step"] for line in points], [100 * (1 - line[key]) for line in points]
          metrics.plot_series(ax, steps, errors, color=color, label=label, **style)
      ax.set(title=f"{'ResNet' if residual else 'plain'} on {dataset}", xlabel="iterations", ylabel="error (%)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  flags.DEFINE_enum(
    "dataset", "digits", ["digits", "cifar10"], "digits: offline, reduced schedule; cifar10: the paper's."
  )
  cli.define_integer_list("depths", "20,56", "Depths 6n+2 to train, plain and residual.")
  flags.DEFINE_string("workdir", None, "Default: runs/degradation-DATASET.")
  cli.define_integer_list("seeds", "0", "Seeds to train each net with (initialisation, data order, augmentation).")
  flags.DEFINE_float("epochs", 0, "Override the recipe's length in epochs (0: keep it).")
  flags.DEFINE_string("data_dir", "", "tfds data directory.")


def main(argv):
  del argv
  cli.start()
  workdir = FLAGS.workdir or f"runs/degradation-{FLAGS.dataset}"
  rows = run(
    FLAGS.dataset, [int(d) for d in FLAGS.depths], workdir, FLAGS.epochs, FLAGS.data_dir, [int(s) for s in FLAGS.seeds]
  )
  print(summary_table(rows))
  print(f"\nwrote {workdir}/degradation.png, degradation.json, degradation.csv")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
