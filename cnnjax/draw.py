"""python -m cnnjax.draw --model=vgg19,plain34,resnet34 --out=fig3.png     (or .svg; .json: the data drawn)

Every network the zoo builds drawn as the papers draw them (ResNet paper Fig. 3): one column per model, input at
the top, each weighted layer a box labelled the papers' way (`7x7 conv, 64, /2`, `pool, /2`, `fc 1000`), boxes
coloured by the size of their output maps (written beside the column where it changes), shortcuts as arcs beside
the column (solid: identity, dotted: where dimensions increase), the model's multiply-adds and parameters under
it. `--block=LAYER` draws the inside of one block instead (GoogLeNet Fig. 2: naive beside reduced). What is drawn
comes from `cnnjax.diagram`, which reads it from the model; this module only renders it.
"""

import ast
import json
import textwrap

from absl import app, flags

from cnnjax import cli, metrics
from cnnjax.diagram import block_panels, depth, figure_data, scaled

FLAGS = flags.FLAGS

# Drawing: units are box heights; one inch holds INCH units.
BOX_H, GAP, COLUMN_W, INCH = 1.0, 0.45, 7.0, 3.2
PALETTE = ("#c6dbef", "#c7e9c0", "#fdd0a2", "#dadaeb", "#fcbba1", "#d9d9d9", "#fee391", "#ccebc5", "#bcbddc")


def _count_text(n: int) -> str:
  return f"x {n}" if n > 1 else ""


def _box(ax, x: float, y: float, label: str, colour: str, size: tuple[float, float], fontsize: float, rounding: float):
  """A rounded box of `size` (width, height) centred on (x, y), with its label."""
  from matplotlib import patches

  (width, height), corner = size, f"round,pad=0,rounding_size={rounding}"
  outline = {"facecolor": colour, "edgecolor": "#444444", "linewidth": 0.6}
  ax.add_patch(patches.FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle=corner, **outline))
  ax.text(x, y, label, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, **style):
  ax.annotate("", end, start, arrowprops={"arrowstyle": "-|>", "color": "#444444", **style})


def _arc(ax, start, end, bend: float, dotted: bool, mutation_scale: float):
  """A shortcut: an arc beside the boxes it spans, solid for an identity, dotted where dimensions change."""
  from matplotlib import patches

  style = {"arrowstyle": "-|>", "mutation_scale": mutation_scale, "linewidth": 0.8, "color": "#333333"}
  connection = f"arc3,rad={bend}"
  ax.add_patch(
    patches.FancyArrowPatch(start, end, connectionstyle=connection, linestyle=":" if dotted else "-", **style)
  )


def render(figures: list[dict], out: str) -> None:
  """Draw `figures` (figure_data of each model) side by side into `out` (.png, .svg or .pdf)."""
  stages = list(dict.fromkeys(b["stage"] for f in figures for b in f["boxes"] if b["kind"] != "aux"))
  colours = {stage: PALETTE[i % len(PALETTE)] for i, stage in enumerate(stages)}
  rows = max(sum(b["kind"] != "aux" for b in f["boxes"]) for f in figures) + 1
  # each column's width: auxiliary heads branch off to the right of theirs
  steps = [COLUMN_W * (1.9 if any(b["kind"] == "aux" for b in f["boxes"]) else 1) + 2.5 for f in figures]
  width = sum(steps)
  legend = "numbers left of a column: the side of its output maps where it changes"
  if any(f["shortcuts"] for f in figures):
    legend += "; arcs: shortcuts, solid where identities, dotted where they change dimensions (zero-padding or "
    legend += "projection)"
  legend = textwrap.fill(legend, int(width / INCH * 18))  # about 18 characters of 6-point text to the inch
  height = rows * (BOX_H + GAP) + 2.6 + 0.7 * legend.count("\n")
  with metrics.figure(out, figsize=(width / INCH, height / INCH)) as ax:
    ax.set_xlim(0, width)
    ax.set_ylim(-height + 0.4, 0.6)
    ax.set_axis_off()
    for column, figure in enumerate(figures):
      _draw_column(
        ax, figure, x0=sum(steps[:column]) + 1.6, colours=colours
      )  # the stage sizes go in the margin on the left
    ax.text(0.3, -height + 0.9, legend, ha="left", va="bottom", fontsize=6, color="#555555")


def _draw_column(ax, figure: dict, x0: float, colours: dict) -> None:
  """One model's column, its left edge at x0: the input, the boxes, the shortcuts, the totals under it."""
  arrow = {"linewidth": 0.5, "mutation_scale": 5}
  middle = x0 + COLUMN_W / 2
  ys, y, previous_stage = [], 0.0, None
  h, w, c = figure["input_shape"]
  ax.text(middle, 0, f"image, {h}x{w}x{c}", ha="center", va="center", fontsize=7)
  for box in figure["boxes"]:
    if box["kind"] == "aux":  # beside the module it reads, off the main path
      ys.append(y)
      _box(ax, x0 + COLUMN_W * 1.4 + 1.2, y, box["label"], "#eeeeee", (COLUMN_W * 0.8, BOX_H), 6.5, rounding=0.25)
      _arrow(ax, (x0 + COLUMN_W, y), (x0 + COLUMN_W + 1.2, y), **arrow)
      continue
    y -= BOX_H + GAP
    ys.append(y)
    _box(ax, middle, y, box["label"], colours[box["stage"]], (COLUMN_W, BOX_H), 6.5, rounding=0.25)
    _arrow(ax, (middle, y + BOX_H / 2 + GAP), (middle, y + BOX_H / 2), **arrow)
    if box["stage"] != previous_stage and box["stage"] != "vector":
      ax.text(x0 - 0.25, y, box["stage"].split("x")[0], ha="right", va="center", fontsize=6, color="#555555")
    previous_stage = box["stage"]
  for shortcut in figure["shortcuts"]:
    top, bottom = ys[shortcut["from"]] + BOX_H / 2 + GAP / 2, ys[shortcut["to"]] - BOX_H / 2 - GAP / 2
    _arc(ax, (x0 + COLUMN_W, top), (x0 + COLUMN_W, bottom), -0.35, shortcut["kind"] != "identity", mutation_scale=5)
    if shortcut["count"] > 1:
      count = _count_text(shortcut["count"])
      ax.text(x0 + COLUMN_W + 1.0, (top + bottom) / 2, count, ha="left", va="center", fontsize=7, fontweight="bold")
  options = ", ".join(f"{k}={v}" for k, v in figure["options"].items())
  title = f"{figure['name']}{f' ({options})' if options else ''}"
  totals = f"{scaled(figure['macs'])} multiply-adds, {scaled(figure['params'])} parameters"
  ax.text(middle, y - BOX_H - GAP, f"{title}\n{totals}", ha="center", va="top", fontsize=7.5, fontweight="bold")


def _shape_text(shape: tuple) -> str:
  return "x".join(map(str, shape[1:]))


def render_blocks(panels: list[dict], out: str) -> None:
  """Draw the inside of one block per panel (block_data), side by side: its input, its branches (one column per
  path from the input, each with its multiply-adds), what joins them, and a shortcut that has no layer."""
  layouts = [_branch_columns(p) for p in panels]
  widths = [max(n, 1) * 7.5 + (3.0 if p["kind"] == "ResidualBlock" else 0) + 1.5 for p, (_, n) in zip(panels, layouts)]
  rows = max(max([depth(p, i) for i in range(len(p["nodes"]))], default=0) for p in panels) + 3
  width, height = sum(widths), rows * 3.2 + 4.5
  with metrics.figure(out, figsize=(width / INCH, height / INCH)) as ax:
    ax.set_xlim(0, width)
    ax.set_ylim(-height, 1.0)
    ax.set_axis_off()
    for k, (panel, layout) in enumerate(zip(panels, layouts)):
      _draw_panel(ax, panel, layout, left=sum(widths[:k]) + 0.75)
    note = "under each branch: its multiply-adds"
    if len(panels) == 2:
      ratio = panels[0]["macs"] / panels[1]["macs"]
      naive, reduced = (p["variant"].removeprefix("inception=") for p in panels)
      note += f"; the {naive} module costs {ratio:.2f}x the {reduced} one"
    ax.text(0.3, -height + 0.3, note, ha="left", va="bottom", fontsize=8, color="#333333")


def _branch_columns(panel: dict) -> tuple[list[int], int]:
  """(the column of each node: the branch it lies on, counted from the input; the number of branches)."""
  roots, columns = [], []
  for node in panel["nodes"]:
    first = node["inputs"][0] if node["inputs"] else -1
    if first == -1:
      roots.append(len(columns))
      columns.append(len(roots) - 1)
    else:
      columns.append(columns[first])
  return columns, len(roots)


def _draw_panel(ax, panel: dict, layout: tuple[list[int], int], left: float) -> None:
  """One block's inside, its left edge at `left`: input, branches, their join and a shortcut without layers."""
  columns, count = layout
  centre = left + count * 7.5 / 2
  place = lambda x, y, text, colour, w=6.4: _box(ax, x, y, text, colour, (w, 2.2), 8, rounding=0.3)
  link = lambda a, b: _arrow(ax, a, b, linewidth=0.6, mutation_scale=6)
  named = dict(panel["options"]) | dict([panel["variant"].split("=", 1)] if "variant" in panel else [])
  options = ", ".join(f"{k}={v}" for k, v in named.items())
  title = f"{panel['model']} {panel['block']}" + (f" ({options})" if options else "")
  title += f"\n{scaled(panel['macs'])} multiply-adds"
  ax.text(centre, 0.2, title, ha="center", va="bottom", fontsize=9, fontweight="bold")
  y_in = -2.0
  place(centre, y_in, f"input\n{_shape_text(panel['input_shape'])}", "#eeeeee")
  positions = []
  for i, node in enumerate(panel["nodes"]):
    x, y = left + columns[i] * 7.5 + 3.75, y_in - 3.2 * (depth(panel, i) + 1)
    positions.append((x, y))
    colour = "#c6dbef" if "conv" in node["label"] else "#fdd0a2"
    place(x, y, f"{node['label']}\n{_shape_text(node['out_shape'])}", colour)
    for source in node["inputs"]:
      start = (centre, y_in - 1.1) if source == -1 else (positions[source][0], positions[source][1] - 1.1)
      link(start, (x, y + 1.1))
  y_out = y_in - 3.2 * (max([depth(panel, i) for i in range(len(panel["nodes"]))], default=0) + 2)
  join = "filter concatenation" if panel["kind"] == "Inception" else "addition, then the activation"
  place(centre, y_out, f"{join}\n{_shape_text(panel['output_shape'])}", "#eeeeee", w=max(6.4, count * 7.5 - 1))
  used = {s for n in panel["nodes"] for s in n["inputs"]}
  for i, (x, y) in enumerate(positions):
    if i not in used:
      link((x, y - 1.1), (x, y_out + 1.1))
  for c in range(count):  # each branch's cost under it
    macs = sum(n["macs"] for n, col in zip(panel["nodes"], columns) if col == c)
    ax.text(left + c * 7.5 + 3.75, y_out - 1.6, f"{scaled(macs)}", ha="center", va="top", fontsize=8, color="#555555")
  if panel["kind"] == "ResidualBlock" and not any("projection" in n["unit"] for n in panel["nodes"]):
    identity = panel["input_shape"] == panel["output_shape"]
    end = (centre + max(3.2, count * 7.5 / 2 - 0.5), y_out)
    _arc(ax, (centre + 3.2, y_in), end, -0.4, dotted=not identity, mutation_scale=6)
    kind = "identity" if identity else "zero-padded identity"
    ax.text(left + count * 7.5 + 1.8, (y_in + y_out) / 2, kind, ha="left", va="center", fontsize=8)


def draw_block(names: list[str], block: str, options: dict, out: str) -> None:
  if len(names) != 1:
    raise app.UsageError("--block draws one model's block: give one --model")
  panels = block_panels(names[0], block, **options)
  if out.endswith(".json"):
    with open(out, "w") as f:
      json.dump({"blocks": panels}, f, indent=1)
  else:
    render_blocks(panels, out)
  ratio = (
    f"; {panels[0]['macs'] / panels[1]['macs']:.2f}x the multiply-adds of the reduced one" if len(panels) == 2 else ""
  )
  print(f"wrote {out}: {names[0]} {block} ({', '.join(scaled(p['macs']) for p in panels)} multiply-adds{ratio})")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.start()
  options = {}
  for item in filter(None, FLAGS.options.split(",")):
    key, _, value = item.partition("=")
    try:
      options[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      options[key] = value  # a bare word: a string option (shortcut=C, inception=naive)
  names = [n for n in FLAGS.model.split(",") if n]
  if FLAGS.block:
    return draw_block(names, FLAGS.block, options=options, out=FLAGS.out)
  fold = {"auto": None, "yes": True, "no": False}[FLAGS.fold]
  figures = [figure_data(name, fold, **options) for name in names]
  if FLAGS.out.endswith(".json"):
    with open(FLAGS.out, "w") as f:
      json.dump({"models": figures}, f, indent=1)
  else:
    render(figures, FLAGS.out)
  drawn = ", ".join(f"{f['name']} ({len(f['boxes'])} boxes)" for f in figures)
  print(f"wrote {FLAGS.out}: {drawn}")


if __name__ == "__main__":
  flags.DEFINE_string("model", "vgg19,plain34,resnet34", "Models to draw side by side, comma-separated (any zoo name).")
  flags.DEFINE_string("options", "", "Model options for every model: KEY=VALUE,... (shortcut=C, preactivation=True).")
  flags.DEFINE_string("out", "architectures.png", "The figure: .png, .svg or .pdf, or .json for the data drawn.")
  flags.DEFINE_string(
    "block",
    None,
    "Draw the inside of this layer of one model instead (inception_3a: naive beside "
    "reduced; conv3_1 of a ResNet: its block and shortcut).",
  )
  flags.DEFINE_enum(
    "fold",
    "auto",
    ["auto", "yes", "no"],
    "Fold runs of identical blocks into one with a count; auto: when a column would have more than 60 boxes.",
  )
  cli.run(main)
