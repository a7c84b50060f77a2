"""GoogLeNet's auxiliary classifiers (Szegedy et al. 2014, section 5): "why output prediction from lower layers?"

    python -m cnnjax.experiments.auxiliary --workdir=runs/auxiliary-digits           # offline on digits
    python -m cnnjax.experiments.auxiliary --seeds=0,1,2 --workdir=runs/auxiliary-digits

Trains GoogLeNet (configs/googlenet.py:local: digits at 32x32, LRN, the paper's layers) twice per seed with
one recipe and budget, with its two auxiliary heads on 4a and 4d (losses weighted 0.3) and without, in
WORKDIR/with_aux-sS and WORKDIR/without_aux-sS (rerunning skips finished runs, resumes unfinished ones).
Then, on one fixed probe batch, at initialisation and at the end of training, it measures the gradient norm
of the training objective (the main loss, plus 0.3 x the auxiliary losses where the heads exist) reaching
each stage of the main path (conv1 ... inception_5b, fc). Both nets start from the same parameters on their
shared layers, so at initialisation the difference below 4d is exactly what the heads inject.
Writes WORKDIR/auxiliary.json (per run: final errors and both gradient profiles), auxiliary.csv (one line
per run) and auxiliary.png (gradient norm per stage at initialisation and at the end; test error against
iterations).
"""

import json

import numpy as np
from etils import epath

from cnnjax import cli, gradflow, metrics, train
from cnnjax import config as config_lib
from cnnjax import workdir as workdir_lib
from cnnjax.experiments import runs

LOWER_STAGES = ("conv1", "conv2_reduce", "conv2", "inception_3a", "inception_3b")


def run_config(aux_heads: bool, seed: int = 0):
  config = config_lib.load("googlenet", "local")
  config.model_options.aux_heads = aux_heads
  config.seed = seed
  return config


def stage_norms(layers: list[dict]) -> dict:
  """Gradient norm per stage of the main path: the root of the sum of its layers' squared norms."""
  squares = {}
  for layer in layers:
    stage = layer["name"].split("/")[0]
    if not stage.startswith("aux_"):
      squares[stage] = squares.get(stage, 0.0) + layer["grad_norm"] ** 2
  return {stage: float(np.sqrt(s)) for stage, s in squares.items()}


def gradient_profile(state, probe, run: train.Run) -> list[dict]:
  """[{stage, grad_norm}] in forward order: the training objective's gradient reaching each stage."""
  norms = stage_norms(gradflow.profile(state, probe, run.step_config)["layers"])
  return [{"stage": stage, "grad_norm": norm} for stage, norm in norms.items()]


def run(workdir: str, seeds=(0,), data_dir: str = "", **overrides) -> list[dict]:
  """Train (or skip, or resume) both variants per seed, measure their gradients, write the outputs."""
  workdir = epath.Path(workdir)
  results = []
  with workdir_lib.claim(workdir):  # one experiment per workdir; each run also owns its own folder
    for aux_heads in (True, False):
      for seed in seeds:
        name = f"{'with' if aux_heads else 'without'}_aux-s{seed}"
        config = run_config(aux_heads, seed)
        config.data_dir = data_dir
        config.update(overrides)
        runs.train_once(config, workdir / name)
        run = train.build(config)
        with gradflow.training_batches(run) as stream:
          probe = next(stream)
        results.append(
          {
            "run": name,
            "aux_heads": aux_heads,
            "seed": seed,
            **metrics.final_errors(workdir / name),
            "gradients_at_init": gradient_profile(train.initial_state(run), probe, run),
            "gradients_at_end": gradient_profile(train.latest_state(run, str(workdir / name)), probe, run),
          }
        )
    (workdir / "auxiliary.json").write_text(json.dumps(results, indent=1))
    metrics.write_csv(workdir / "auxiliary.csv", [csv_row(r) for r in results])
    plot(workdir, results)
  return results


def lower_norm(profile: list[dict]) -> float:
  """The gradient norm over all of LOWER_STAGES together."""
  return float(np.sqrt(sum(p["grad_norm"] ** 2 for p in profile if p["stage"] in LOWER_STAGES)))


def csv_row(result: dict) -> dict:
  row = {k: result[k] for k in ("run", "aux_heads", "seed", "step", "train_error", "test_error")}
  row["lower_grad_init"] = lower_norm(result["gradients_at_init"])
  row["lower_grad_end"] = lower_norm(result["gradients_at_end"])
  return row


def plot(workdir, results: list[dict]):
  with metrics.figure(workdir / "auxiliary.png", 1, 3, figsize=(15, 4.2)) as axes:
    for ax, when in zip(axes[:2], ("init", "end")):
      for r in results:
        profile = r[f"gradients_at_{when}"]
        color = "C0" if r["aux_heads"] else "C3"
        label = ("with auxiliary heads" if r["aux_heads"] else "without") if r["seed"] == results[0]["seed"] else None
        ax.semilogy(
          range(len(profile)), [p["grad_norm"] for p in profile], "o-", color=color, markersize=3, label=label
        )
      stages = [p["stage"].replace("inception_", "") for p in results[0][f"gradients_at_{when}"]]
      ax.set_xticks(range(len(stages)), stages, rotation=60, fontsize=7)
      ax.set(
        ylabel="gradient norm",
        title=f"gradient reaching each stage, {'at initialisation' if when == 'init' else 'after training'}",
      )
      ax.grid(alpha=0.3, which="both")
      ax.legend(fontsize=7)
    for r in results:
      lines = [line for line in metrics.read_metrics(workdir / r["run"] / "metrics.jsonl") if "eval_accuracy" in line]
      metrics.plot_series(
        axes[2],
        [line["step"] for line in lines],
        [100 * (1 - line["eval_accuracy"]) for line in lines],
        color="C0" if r["aux_heads"] else "C3",
        label=r["run"],
      )
    axes[2].set(xlabel="iterations", ylabel="test error (%)", title="test error", yscale="log")
    axes[2].grid(alpha=0.3, which="both")
    axes[2].legend(fontsize=7)


def summary_table(results: list[dict]) -> str:
  lines = [
    "| run | training error (%) | test error (%) | lower layers' gradient at init | at end |",
    "|---|---|---|---|---|",
  ]
  for r in map(csv_row, results):
    lines.append(
      f"| {r['run']} | {r['train_error']:.1f} | {r['test_error']:.1f} | {r['lower_grad_init']:.3g} "
      f"| {r['lower_grad_end']:.3g} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  runs.define_flags("runs/auxiliary-digits", "0", "variant")
  cli.run(runs.command(run, summary_table, "auxiliary.png, auxiliary.json, auxiliary.csv"))
