"""Transfer: does a network pretrained on one task learn another from few examples better than from scratch?

    python -m cnnjax.experiments.transfer --workdir=runs/transfer-digits --seeds=0,1,2     # offline, on digits

LeNet-5 (configs/finetune.py:local) is pretrained once on digits 0-4 (all 734 training images), then digits 5-9
are learned from 10 training images each (50 in all) with one budget and recipe, per seed, three ways:
`finetune` (every layer from the pretrained network, a new head), `probe` (only the new head trains on the frozen
pretrained body: trainable='head') and `scratch` (no pretraining). Test error on all 130 test images of 5-9.
Writes WORKDIR/source (the pretrained run), WORKDIR/{finetune,probe,scratch}-sS, transfer.csv (one line per run)
and transfer.png (test error per way and seed; test error against iterations). Rerunning skips finished runs.
"""

import numpy as np
from etils import epath

from cnnjax import cli, metrics
from cnnjax import config as config_lib
from cnnjax import workdir as workdir_lib
from cnnjax.experiments import runs

EARLY = 10  # iterations: the test error this early shows what the start is worth before training catches up
WAYS = {"finetune": "fine-tuned (all layers)", "probe": "linear probe (head only)", "scratch": "from scratch"}
COLORS = {"finetune": "C0", "probe": "C2", "scratch": "C3"}


def run_config(way: str, source: str, seed: int):
  config = config_lib.load("finetune", "local")
  config.seed = seed
  if way != "scratch":
    config.init_from = source
  if way == "probe":
    config.trainable = "head"
  return config


def run(workdir: str, seeds=(0,), data_dir: str = "", **overrides) -> list[dict]:
  """Pretrain once, then train every way per seed (finished runs are skipped); write the table and figure."""
  workdir = epath.Path(workdir)
  results = []
  with workdir_lib.claim(workdir):
    source = config_lib.load("finetune", "local,pretrain")
    source.data_dir = data_dir
    source.update(overrides)
    runs.train_once(source, workdir / "source")
    results.append(
      {
        "run": "source",
        "way": "pretrain on 0-4",
        "seed": 0,
        **metrics.final_errors(workdir / "source"),
        f"test_error_at_{EARLY}": None,
      }
    )
    for seed in seeds:
      for way in WAYS:
        config = run_config(way, str(workdir / "source"), seed)
        config.data_dir = data_dir
        config.update(overrides)
        runs.train_once(config, workdir / f"{way}-s{seed}")
        name = f"{way}-s{seed}"
        results.append(
          {
            "run": name,
            "way": way,
            "seed": seed,
            **metrics.final_errors(workdir / name),
            f"test_error_at_{EARLY}": early_error(workdir / name),
          }
        )
    metrics.write_csv(workdir / "transfer.csv", results)
    plot(workdir, results)
  return results


def early_error(run_dir) -> float | None:
  """Test error (%) at the evaluation at iteration EARLY, if the run had one."""
  lines = [
    line
    for line in metrics.read_metrics(epath.Path(run_dir) / "metrics.jsonl")
    if line.get("step") == EARLY and "eval_accuracy" in line
  ]
  return 100 * (1 - lines[0]["eval_accuracy"]) if lines else None


def plot(workdir, results: list[dict]):
  trained = [r for r in results if r["way"] in WAYS]
  with metrics.figure(workdir / "transfer.png", 1, 2, figsize=(12, 4.2)) as (bars, curves):
    for i, way in enumerate(WAYS):
      errors = [r["test_error"] for r in trained if r["way"] == way]
      bars.bar(i, np.mean(errors), color=COLORS[way], alpha=0.5)
      bars.plot([i] * len(errors), errors, "o", color=COLORS[way], markersize=5)
      bars.text(i, 1, f"mean\n{np.mean(errors):.1f}%", ha="center", va="bottom")  # inside the bar, clear of the dots
    bars.set_xticks(range(len(WAYS)), list(WAYS.values()))
    bars.set(
      ylabel="test error on digits 5-9 (%)", title=f"10 examples per class, {len(trained) // len(WAYS)} seed(s) (dots)"
    )
    bars.grid(alpha=0.3, axis="y")
    for r in trained:
      lines = [line for line in metrics.read_metrics(workdir / r["run"] / "metrics.jsonl") if "eval_accuracy" in line]
      metrics.plot_series(
        curves,
        [line["step"] for line in lines],
        [100 * (1 - line["eval_accuracy"]) for line in lines],
        color=COLORS[r["way"]],
        label=WAYS[r["way"]] if r["seed"] == trained[0]["seed"] else None,
      )
    curves.set(
      xlabel="iterations (batch 50: the whole training set)", ylabel="test error (%)", title="test error while training"
    )
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)


def summary_table(results: list[dict]) -> str:
  lines = [
    f"| way | seeds | test error (%) at the end: mean | per seed | at {EARLY} iterations: mean | per seed |",
    "|---|---|---|---|---|---|",
  ]
  for way, label in {"pretrain on 0-4": "pretrained on digits 0-4 (its own test set)", **WAYS}.items():
    rows = [r for r in results if r["way"] == way]
    cells = []
    for key in ("test_error", f"test_error_at_{EARLY}"):
      errors = [r[key] for r in rows if r.get(key) is not None]
      cells += [f"{np.mean(errors):.1f}", ", ".join(f"{e:.1f}" for e in errors)] if errors else ["", ""]
    lines.append(f"| {label} | {len(rows)} | {' | '.join(cells)} |")
  return "\n".join(lines)


if __name__ == "__main__":
  runs.define_flags("runs/transfer-digits", "0,1,2", "way")
  cli.run(runs.command(run, summary_table, "transfer.png, transfer.csv"))
