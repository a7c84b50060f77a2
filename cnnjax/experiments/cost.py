"""What the networks cost, as the lecture shows it: multiply-adds per stage, the 1x1 reductions, the winners.

    python -m cnnjax.experiments.cost --workdir=runs/cost        # a few seconds: nothing is trained or run

Writes into WORKDIR:
- fig3.png: the ResNet paper's Fig. 3 comparison (VGG-19 19.6 G, plain-34 3.6 G, ResNet-34 3.6 G
  multiply-adds) as one bar per network, split into its stages;
- inception.png: each GoogLeNet inception module's multiply-adds, naive (Fig. 2a) vs with 1x1 reductions
  (Fig. 2b, as built), on the module's real input;
- ilsvrc.png: the ILSVRC classification winners in the zoo by year, top-5 error, with the depth and
  multiply-adds of the network behind each;
- cost.json: the three tables behind the figures.
Every multiply-add and depth is counted from the traced model (cnnjax/complexity.py); top-5 errors are the
papers' own, with their source.
"""

import json
from typing import NamedTuple

import jax
from absl import flags
from etils import epath

from cnnjax import cli, complexity, metrics, models, zoo

FLAGS = flags.FLAGS

# Fig. 3's networks; the paper's ResNet-34 there has identity shortcuts with zero-padding where the width
# grows (option A: no parameters, no multiply-adds), option B projects with 1x1 convs instead.
FIG3_MODELS = {
  "vgg19": ("vgg19", {}),
  "plain34": ("plain34", {}),
  "resnet34-A": ("resnet34", {"shortcut": "A"}),
  "resnet34-B": ("resnet34", {"shortcut": "B"}),
}


class Entry(NamedTuple):
  """One ILSVRC classification result as its paper states it; `model` is the zoo model behind it."""

  year: int
  entry: str
  top5_error: float
  source: str
  model: str = ""


# Only results printed in the papers of the zoo's networks (docs/reference.md, section 9); the 2010,
# 2011 and 2013 winners are neither in the zoo nor in those papers, so they are left out rather than quoted
# from memory.
ILSVRC = (
  Entry(2012, "runner-up, no CNN", 26.2, "AlexNet paper, abstract"),
  Entry(2012, "AlexNet, 7 CNNs", 15.3, "AlexNet paper, abstract", "alexnet"),
  Entry(2014, "VGG, 7 nets (2nd)", 7.3, "VGG paper, Table 7", "vgg19"),
  Entry(2014, "GoogLeNet, 7 models", 6.67, "GoogLeNet paper, Tables 2-3", "googlenet"),
  Entry(2015, "ResNet, ensemble", 3.57, "ResNet paper, Table 5", "resnet152"),
)


def fig3_table() -> list[dict]:
  """Per network of Fig. 3: its stages' multiply-adds in forward order, the total, and the ratio to ResNet-34."""
  rows = [{"model": label, "stages": zoo.breakdown(name, **options)} for label, (name, options) in FIG3_MODELS.items()]
  for row in rows:
    row["macs"] = sum(s["macs"] for s in row["stages"])
  base = next(r["macs"] for r in rows if r["model"] == "resnet34-A")
  for row in rows:
    row["over_resnet34"] = row["macs"] / base
  return rows


def ilsvrc_table() -> list[dict]:
  """The ILSVRC entries with the depth and multiply-adds of their zoo network (at its paper input size)."""
  rows = []
  for e in ILSVRC:
    row = e._asdict()
    if e.model:
      cost = complexity.cost(models.create(e.model), models.input_shape(e.model))
      row.update(depth=cost.depth, macs=cost.macs)
    rows.append(row)
  return rows


def run(workdir: str) -> dict:
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tables = {"fig3": fig3_table(), "inception": zoo.inception_savings("googlenet"), "ilsvrc": ilsvrc_table()}
  (workdir / "cost.json").write_text(json.dumps(tables, indent=1))
  plot_fig3(tables["fig3"], workdir / "fig3.png")
  plot_inception(tables["inception"], workdir / "inception.png")
  plot_ilsvrc(tables["ilsvrc"], workdir / "ilsvrc.png")
  return tables


def plot_fig3(rows: list[dict], path):
  from matplotlib import colormaps, patches

  with metrics.figure(path, figsize=(9, 3.6)) as ax:
    stage_names = list(dict.fromkeys(s["stage"] for r in rows for s in r["stages"]))
    colors = {name: colormaps["tab20"](i % 20) for i, name in enumerate(stage_names)}
    for y, row in enumerate(reversed(rows)):
      left = 0.0
      for stage in row["stages"]:
        width = stage["macs"] / 1e9
        ax.barh(y, width, left=left, color=colors[stage["stage"]], edgecolor="white", linewidth=0.5)
        left += width
      ax.text(
        left + 0.2, y, f"{row['macs'] / 1e9:.2f} G = {row['over_resnet34']:.2f}x ResNet-34", va="center", fontsize=8
      )
    ax.set_yticks(range(len(rows)), [r["model"] for r in reversed(rows)])
    ax.set(xlabel="multiply-adds (billions), one 224x224 image", title="ResNet paper, Fig. 3: multiply-adds per stage")
    ax.set_xlim(0, max(r["macs"] for r in rows) / 1e9 * 1.4)
    ax.legend(
      [patches.Rectangle((0, 0), 1, 1, color=colors[n]) for n in stage_names],
      stage_names,
      fontsize=7,
      ncol=2,
      loc="lower right",
    )


def plot_inception(rows: list[dict], path):
  with metrics.figure(path, figsize=(8, 3.5)) as ax:
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["naive_macs"] / 1e6 for r in rows], 0.4, label="naive (Fig. 2a)", color="C3")
    ax.bar(
      [i + 0.2 for i in x], [r["reduced_macs"] / 1e6 for r in rows], 0.4, label="1x1 reductions (Fig. 2b)", color="C0"
    )
    for i, r in zip(x, rows):
      ax.text(i, r["naive_macs"] / 1e6, f"{r['naive_over_reduced']:.1f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [f"{r['module']}\n{r['input']}" for r in rows], fontsize=7)
    ax.set(ylabel="multiply-adds (millions)", title="GoogLeNet inception modules: naive vs 1x1 reductions")
    ax.legend(fontsize=8)


def plot_ilsvrc(rows: list[dict], path):
  with metrics.figure(path, figsize=(8, 3.8)) as ax:
    x = range(len(rows))
    ax.bar(list(x), [r["top5_error"] for r in rows], color=["C7" if not r["model"] else "C0" for r in rows])
    for i, r in zip(x, rows):
      note = f"\n{r['depth']} layers\n{r['macs'] / 1e9:.2f} G" if r["model"] else ""
      ax.text(i, r["top5_error"] + 0.4, f"{r['top5_error']}%{note}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [f"{r['year']}\n{r['entry']}" for r in rows], fontsize=7)
    ax.set(ylabel="top-5 error (%)", title="ILSVRC classification, networks in the zoo")
    ax.set_ylim(0, max(r["top5_error"] for r in rows) * 1.35)


def markdown(tables: dict) -> str:
  """The three tables as the command prints them."""
  lines = ["| network | multiply-adds | / ResNet-34 |", "|---|---|---|"]
  lines += [f"| {r['model']} | {r['macs']:,} | {r['over_resnet34']:.2f}x |" for r in tables["fig3"]]
  lines += ["", "| module | input | naive | with 1x1 reductions | naive / reduced |", "|---|---|---|---|---|"]
  lines += [
    f"| {r['module']} | {r['input']} | {r['naive_macs']:,} | {r['reduced_macs']:,} | {r['naive_over_reduced']:.2f}x |"
    for r in tables["inception"]
  ]
  lines += [
    "",
    "| year | entry | top-5 error (%) | network | depth | multiply-adds | source |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in tables["ilsvrc"]:
    cost = f"{r['model']} | {r['depth']} | {r['macs']:,}" if r["model"] else "| |"
    lines.append(f"| {r['year']} | {r['entry']} | {r['top5_error']} | {cost} | {r['source']} |")
  return "\n".join(lines)


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  flags.DEFINE_string("workdir", "runs/cost", "Where the figures and cost.json go.")


def main(argv):
  del argv
  jax.config.update("jax_platforms", "cpu")  # traced, never run: leave accelerators alone
  print(markdown(run(FLAGS.workdir)))
  print(f"\nwrote {FLAGS.workdir}/fig3.png, inception.png, ilsvrc.png, cost.json")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
