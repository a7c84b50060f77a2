"""The zoo as a table: every model's year, ILSVRC result, depth, parameters and multiply-adds, ours beside the paper's.

    python -m cnnjax.zoo                                   # every model at its paper input size
    python -m cnnjax.zoo --format=markdown                 # also csv, json
    python -m cnnjax.zoo --model=vgg19,plain34,resnet34 --breakdown   # per stage, and the cost ratio
    python -m cnnjax.zoo --model=googlenet --breakdown     # + naive vs reduced cost of each inception module

Nothing is run: every figure comes from the traced computation (see cnnjax/complexity.py).
"""

import csv
import io
import json
from typing import NamedTuple

import jax
from absl import flags

from cnnjax import cli, complexity, models
from cnnjax.models.blocks import inception_macs
from cnnjax.models.googlenet import INCEPTION_SPECS


class Paper(NamedTuple):
  """What the paper (or, marked, torchvision) states: rounded figures as printed, with their source."""

  year: int
  params: str
  macs: str
  ilsvrc: str = ""


_RESNET_TABLE1 = {18: "1.8G", 34: "3.6G", 50: "3.8G", 101: "7.6G", 152: "11.3G"}
_CIFAR_TABLE6 = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M"}

PAPER = {
  "lenet5": Paper(1998, "60,000 [paper]", "340,908 connections [paper]"),
  "alexnet": Paper(2012, "60M [paper]", "", "1st 2012: 15.3% top-5 (7 CNNs)"),
  "alexnet_torchvision": Paper(2014, "61.1M [tv]", "0.714G [tv]"),
  "vgg11": Paper(2014, "133M [paper]", "7.609G [tv]"),
  "vgg13": Paper(2014, "133M [paper]", "11.308G [tv]"),
  "vgg16": Paper(2014, "138M [paper]", "15.3G [ResNet paper]", "2nd 2014: 7.3% top-5 (7 nets)"),
  "vgg19": Paper(2014, "144M [paper]", "19.6G [ResNet paper]", "2nd 2014: 7.3% top-5 (7 nets)"),
  "vgg11_bn": Paper(2015, "132.9M [tv]", "7.609G [tv]"),
  "vgg13_bn": Paper(2015, "133.1M [tv]", "11.308G [tv]"),
  "vgg16_bn": Paper(2015, "138.4M [tv]", "15.47G [tv]"),
  "vgg19_bn": Paper(2015, "143.7M [tv]", "19.632G [tv]"),
  "googlenet": Paper(2014, "6.8M [paper]", "1.5G [paper]", "1st 2014: 6.67% top-5 (7 models)"),
  "googlenet_torchvision": Paper(2014, "6.6M [tv]", "1.498G [tv]"),
  **{f"resnet{d}": Paper(2015, "", f"{m} [paper]") for d, m in _RESNET_TABLE1.items()},
  "plain18": Paper(2015, "", "1.8G [paper]"),
  "plain34": Paper(2015, "", "3.6G [paper]"),
  **{f"{kind}{d}": Paper(2015, f"{p} [paper]", "") for d, p in _CIFAR_TABLE6.items() for kind in ("resnet", "plain")},
}
PAPER["resnet152"] = PAPER["resnet152"]._replace(ilsvrc="1st 2015: 3.57% top-5 (ensemble)")
for _depth, _params in (
  (18, "11.7M [tv]"),
  (34, "21.8M [tv]"),
  (50, "25.6M [tv]"),
  (101, "44.5M [tv]"),
  (152, "60.2M [tv]"),
):
  PAPER[f"resnet{_depth}"] = PAPER[f"resnet{_depth}"]._replace(params=_params)

FLAGS = flags.FLAGS


def describe(name: str) -> dict:
  """One zoo row: our figures for `name` at its paper input size, beside the paper's."""
  shape = models.input_shape(name)
  cost = complexity.cost(models.create(name), shape)
  paper = PAPER.get(name, Paper(2015, "", ""))
  return {
    "name": name,
    "year": paper.year,
    "ilsvrc": paper.ilsvrc,
    "depth": cost.depth,
    "params": cost.params,
    "paper_params": paper.params,
    "macs": cost.macs,
    "paper_macs": paper.macs,
    "input_shape": list(shape),
  }


def breakdown(name: str, **options) -> list[dict]:
  """Per-stage rows of `name` (built with `options`) at its paper input: parameters, MACs and their shares."""
  cost = complexity.cost(models.create(name, **options), models.input_shape(name))
  return [
    {"stage": stage, "params": p, "macs": m, "params_share": p / cost.params, "macs_share": m / cost.macs}
    for stage, (p, m) in cost.by_stage().items()
  ]


def inception_savings(name: str = "googlenet") -> list[dict]:
  """Each inception module's multiply-adds with 1x1 reductions (as built) and naive (Fig. 2a) on the same input."""
  model = models.create(name)
  shape = models.input_shape(name)
  (_, out), _ = complexity.abstract_init(model, shape)
  rows, in_channels = [], out["conv2"].shape[-1]
  for stage, spec in INCEPTION_SPECS.items():
    _, h, w, channels = out[f"inception_{stage}"].shape
    reduced = inception_macs(h, w, in_channels, spec, "reduced", model.c5_kernel)
    naive = inception_macs(h, w, in_channels, spec, "naive", model.c5_kernel)
    rows.append(
      {
        "module": stage,
        "input": f"{h}x{w}x{in_channels}",
        "reduced_macs": reduced,
        "naive_macs": naive,
        "naive_over_reduced": naive / reduced,
      }
    )
    in_channels = channels
  return rows


def _human(n: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.3f}{unit}"
  return str(int(n))


def _cells(row: dict) -> dict:
  """Display strings for a row: exact integers with separators, shares as percentages."""
  cells = {}
  for key, value in row.items():
    if isinstance(value, float):
      cells[key] = f"{value:.1%}" if key.endswith("share") else f"{value:.2f}x"
    elif isinstance(value, int) and key != "year" and key != "depth":
      cells[key] = f"{value:,}"
    elif isinstance(value, list):
      cells[key] = "x".join(map(str, value))
    else:
      cells[key] = str(value)
  return cells


def render(rows: list[dict], fmt: str) -> str:
  """rows as an aligned text table, a markdown table, CSV or JSON."""
  if fmt == "json":
    return json.dumps(rows, indent=1)
  if fmt == "csv":
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "x".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows)
    return buf.getvalue().rstrip("\n")
  header = list(rows[0])
  body = [list(_cells(r).values()) for r in rows]
  if fmt == "markdown":
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
  widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
  numeric = [all(c.replace(",", "").replace(".", "").rstrip("%x").isdigit() for c in col if c) for col in zip(*body)]
  fmt_row = lambda r: "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()
  return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in body])


def report(names: list[str], show_breakdown: bool, fmt: str) -> str:
  """The text `python -m cnnjax.zoo` prints."""
  if not show_breakdown:
    return render([describe(n) for n in names], fmt)
  sections = {}
  for name in names:
    sections[name] = {"stages": breakdown(name)}
    if name.startswith("googlenet"):
      sections[name]["inception_modules"] = inception_savings(name)
  if fmt == "json":
    return json.dumps(sections, indent=1)
  parts = []
  for name, section in sections.items():
    parts.append(
      f"{name} at {'x'.join(map(str, models.input_shape(name)))}, per stage:\n{render(section['stages'], fmt)}"
    )
    if "inception_modules" in section:
      parts.append(
        f"{name}: what the 1x1 reductions save, per inception module on its real input:\n"
        f"{render(section['inception_modules'], fmt)}"
      )
  if len(names) > 1:
    totals = {n: sum(r["macs"] for r in sections[n]["stages"]) for n in names}
    base = names[-1]
    parts.append(
      "\n".join(f"{n}: {_human(totals[n])} multiply-adds = {totals[n] / totals[base]:.2f}x {base}" for n in names)
    )
  return "\n\n".join(parts)


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  flags.DEFINE_list("model", None, "Models to show (comma-separated); default: the whole zoo.")
  flags.DEFINE_bool("breakdown", False, "Per-stage parameters and multiply-adds of each --model.")
  flags.DEFINE_enum("format", "table", ["table", "markdown", "csv", "json"], "Output format.")


def main(argv):
  del argv
  jax.config.update("jax_platforms", "cpu")  # the zoo traces and never runs: leave accelerators alone
  names = FLAGS.model or models.names()
  for name in names:
    models.input_shape(name)  # raises, listing the valid names, for an unknown one
  print(report(names, FLAGS.breakdown, FLAGS.format))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
