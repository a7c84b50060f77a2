"""python -m cnnjax.draw --model=vgg19,plain34,resnet34 --out=fig3.png     (or .svg; .json: the data drawn)

Every network the zoo builds drawn as the papers draw them (ResNet paper Fig. 3): one column per model, input at
the top, each weighted layer a box labelled the papers' way (`7x7 conv, 64, /2`, `pool, /2`, `fc 1000`), boxes
coloured by the size of their output maps (written beside the column where it changes), shortcuts as arcs beside
the column (solid: identity, dotted: where dimensions increase), the model's multiply-adds and parameters under
it. Nothing here knows an architecture: the boxes come from the traced computation (the jaxpr the complexity
counter walks: convolutions, matrix products, pools, each under the name of the module it ran in) and the module
structure (which modules are residual blocks, inception modules, auxiliary heads), so every registered model and
option gets its figure. Long runs of identical blocks fold into one with a count (`x 36`), as the papers' tables
write them.
"""
import ast
import dataclasses
import functools
import json
import re
import textwrap
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from cnnjax import cli, complexity, metrics, models

FLAGS = flags.FLAGS

# Modules drawn as one box whatever runs inside them, by class name: their kind.
WHOLE = {"Inception": "inception", "AuxiliaryClassifier": "aux"}
BLOCKS = ("ResidualBlock",)  # drawn as their convolutions, with the shortcut beside them
POOLS = {"reduce_window_max": "max", "reduce_window_sum": "avg"}
LAYER_NAMES = {"RBFOutput": "RBF"}
TRAINING_ONLY = ("AuxiliaryClassifier",)  # drawn, but not in the inference cost under the column  # layers whose paper names them otherwise than by their operation


@dataclasses.dataclass
class Box:
  label: str
  kind: str  # conv | fc | pool | inception | aux
  stage: str  # what the colour follows: the output's spatial size ("56x56"), or "vector"
  output_shape: tuple
  count: int = 1
  scope: str = ""  # the module it belongs to (its top-level name)


@dataclasses.dataclass
class Shortcut:
  start: int  # box indices: the block's first and last box
  end: int
  kind: str  # identity | zero_pad | projection
  count: int = 1


@dataclasses.dataclass
class Event:
  """One weighted or pooling operation of the trace, in execution order."""

  scope: tuple[str, ...]
  primitive: str
  in_shape: tuple
  out_shape: tuple
  params: dict
  macs: int = 0


def _events(jaxpr, scope: tuple[str, ...], out: list):
  for eqn in jaxpr.eqns:
    here = scope + tuple(p for p in str(eqn.source_info.name_stack).split("/") if p)
    subs = list(complexity.sub_jaxprs(eqn))
    if subs and eqn.primitive.name not in ("custom_jvp_call", "custom_vjp_call"):
      _events(subs[0], here, out)  # (one branch: the models' calls are jit and checkpoint wrappers)
      continue
    name = eqn.primitive.name
    shape = lambda v: tuple(getattr(v.aval, "shape", ()))  # noqa: E731
    if name in ("conv_general_dilated", "dot_general") or name in POOLS:
      out.append(Event(here, name, shape(eqn.invars[0]), shape(eqn.outvars[0]), dict(eqn.params) | {"rhs": shape(eqn.invars[-1])},
                       complexity.primitive_macs(eqn)))  # fmt: skip
    elif name == "reduce_sum" and tuple(eqn.params.get("axes", ())) == (1, 2):  # a global average pool
      out.append(Event(here, "global_avg", shape(eqn.invars[0]), shape(eqn.outvars[0]), {}))


def _trace(model, variables, x):
  """(the jaxpr of a training forward pass, {module path: (class name, module, input shape, output shape)} of every
  module's first call), from one trace."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    result = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path not in calls:
      first = jax.tree.leaves(result)[0] if jax.tree.leaves(result) else None
      calls[context.module.path] = (type(context.module).__name__, context.module, tuple(args[0].shape) if args else (),
                                    tuple(first.shape) if first is not None else ())  # fmt: skip
    return result

  def forward(variables, x):
    return model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])

  with nn.intercept_methods(record):
    closed = jax.make_jaxpr(forward)(variables, x)
  return closed.jaxpr, calls


def _stage(shape: tuple) -> str:
  return f"{shape[1]}x{shape[2]}" if len(shape) == 4 else "vector"


def _conv_label(event: Event, features: int) -> str:
  kh, kw = event.params["rhs"][:2]
  stride = event.params["window_strides"][0]
  groups = event.params.get("feature_group_count", 1)
  return f"{kh}x{kw} conv, {features}" + (f", /{stride}" if stride > 1 else "") + (f", {groups} groups" if groups > 1 else "")


def _pool_label(event: Event) -> str:
  if event.primitive == "global_avg":
    return "avg pool"
  window, strides = event.params["window_dimensions"], event.params["window_strides"]
  kind = "pool" if event.primitive == "reduce_window_max" else "avg pool"
  return f"{kind}, /{strides[1]}" if strides[1] > 1 else f"{window[1]}x{window[2]} {kind}"


def _paper_name(scope: str) -> str:
  """LeNet-5's layers are named as its paper does (C1, S2, F6): those names go on the boxes."""
  return f"{scope}: " if re.fullmatch(r"[A-Z]\d", scope) else ""


def figure_data(name: str, fold: bool | None = None, **options) -> dict:
  """What the figure of zoo model `name` (with `options`) shows: {name, macs, params, boxes, shortcuts}.

  `fold`: fold runs of identical residual blocks into one with a count; by default when the column would have
  more than 60 boxes. MACs and parameters are those of inference (without GoogLeNet's auxiliary heads), as the
  zoo prints them.
  """
  data = _unfolded(name, tuple(sorted(options.items())))
  if fold or (fold is None and len(data["boxes"]) > 60):
    data = folded(data)
  return {**data, "boxes": [dataclasses.asdict(b) for b in data["boxes"]],
          "shortcuts": [{"from": s.start, "to": s.end, "kind": s.kind, "count": s.count} for s in data["shortcuts"]]}


@functools.lru_cache(maxsize=16)
def _unfolded(name: str, options: tuple) -> dict:
  options = dict(options)
  model = models.create(name, **options)
  shape = models.input_shape(name)
  variables = complexity.abstract_variables(model, shape, train=True)
  jaxpr, modules = _trace(model, variables, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
  events: list[Event] = []
  _events(jaxpr, (), events)
  root = type(model).__name__  # the name stack starts at the model itself
  # (a module's own methods add 'block._shortcut' to the stack: not a module of their own)
  events = [dataclasses.replace(e, scope=tuple(p for p in (e.scope[1:] if e.scope[:1] == (root,) else e.scope) if "." not in p))
            for e in events]  # fmt: skip

  boxes, shortcuts, blocks = [], [], []
  done_whole = set()
  for event in events:
    top = event.scope[:1]
    cls, module, block_in, block_out = modules.get(top, ("", None, (), ()))
    if cls in WHOLE:
      if top not in done_whole:  # one box for the module, at its first operation
        done_whole.add(top)
        label = f"{top[0].replace('_', ' ')}, {block_out[-1]}" if cls == "Inception" else f"auxiliary classifier, fc {block_out[-1]}"
        boxes.append(Box(label, WHOLE[cls], _stage(block_out), block_out, scope=top[0]))
      continue
    if event.primitive in POOLS or event.primitive == "global_avg":
      window = event.params.get("window_dimensions", (1, 2, 2, 1))
      if event.primitive != "global_avg" and window[1] * window[2] == 1:
        continue  # a window over channels only: local response normalisation, not a pool
      label = f"{_paper_name(top[0]) if top else ''}{'subsampling, /2' if cls == 'Subsampling' else _pool_label(event)}"
      boxes.append(Box(label, "pool", _stage(event.out_shape), event.out_shape, scope=top[0] if top else ""))
      continue
    if event.primitive == "dot_general":
      if not top or len(event.params["rhs"]) != 2:
        continue  # a product of activations, not a layer
      kind = LAYER_NAMES.get(cls, "fc")  # LeNet-5's output compares with fixed codes: its paper calls it RBF
      boxes.append(Box(f"{_paper_name(top[0])}{kind} {event.out_shape[-1]}", "fc", "vector", event.out_shape, scope=top[0]))
      continue
    # a convolution: one box per unit (a residual block's convolutions, or a top-level layer); LeNet's sparse C3
    # runs one convolution per map: one box for the layer
    unit = event.scope[:2] if cls in BLOCKS else top
    if cls in BLOCKS and "projection" in event.scope:
      continue  # drawn as the shortcut
    if boxes and boxes[-1].scope == "/".join(unit):
      out_shape = modules.get(unit, (None, None, None, event.out_shape))[3] or event.out_shape
      boxes[-1].output_shape, boxes[-1].stage = out_shape, _stage(out_shape)
      continue
    features = (modules.get(unit, (None, None, None, event.out_shape))[3] or event.out_shape)[-1]
    out_shape = modules.get(unit, (None, None, None, event.out_shape))[3] or event.out_shape
    boxes.append(Box(f"{_paper_name(top[0])}{_conv_label(event, features)}", "conv", _stage(out_shape), out_shape, scope="/".join(unit)))
    if cls in BLOCKS and (not blocks or blocks[-1][0] != top):
      blocks.append((top, len(boxes) - 1))
  for top, first in blocks:
    cls, module, block_in, block_out = modules[top]
    last = max(i for i, b in enumerate(boxes) if b.scope.split("/")[0] == top[0])
    if not module.residual:
      continue
    projected = any(path[:1] == top and path[-1:] == ("projection",) for path in modules) or module.shortcut == "C"
    kind = "projection" if projected else ("zero_pad" if block_in != block_out else "identity")
    shortcuts.append(Shortcut(first, last, kind))
  training_only = {path[0] for path, (cls, *_) in modules.items() if cls in TRAINING_ONLY}
  macs = sum(e.macs for e in events if not (e.scope[:1] and e.scope[0] in training_only))
  params = complexity.size({k: v for k, v in variables["params"].items() if k not in training_only})
  return {"name": name, "options": options, "input_shape": shape, "macs": macs, "params": params, "boxes": boxes,
          "shortcuts": shortcuts}  # fmt: skip


def folded(data: dict) -> dict:
  """`data` with each run of identical residual blocks (same boxes, same shortcut) drawn once with its count."""
  boxes, shortcuts = data["boxes"], data["shortcuts"]
  spans = {s.start: s for s in shortcuts}
  out_boxes, out_shortcuts, i = [], [], 0
  while i < len(boxes):
    span = spans.get(i)
    if span is None:
      out_boxes.append(boxes[i])
      i += 1
      continue
    signature = lambda s: ([(b.label, b.output_shape) for b in boxes[s.start : s.end + 1]], s.kind)  # noqa: E731
    run = [span]
    while (nxt := spans.get(run[-1].end + 1)) is not None and signature(nxt) == signature(span):
      run.append(nxt)
    start = len(out_boxes)
    for b in boxes[span.start : span.end + 1]:
      out_boxes.append(dataclasses.replace(b, count=len(run)))
    out_shortcuts.append(Shortcut(start, len(out_boxes) - 1, span.kind, len(run)))
    i = run[-1].end + 1
  return {**data, "boxes": out_boxes, "shortcuts": out_shortcuts}


def totals(data: dict) -> Counter:
  """How many boxes of each kind and shortcuts of each kind the figure stands for (folded items counted out)."""
  counts = Counter()
  for b in data["boxes"]:
    counts[b["kind"]] += b["count"]
  for s in data["shortcuts"]:
    counts[f"shortcut:{s['kind']}"] += s["count"]
  return counts


# Drawing: units are box heights; one inch holds INCH units.
BOX_H, GAP, COLUMN_W, INCH = 1.0, 0.45, 7.0, 3.2
PALETTE = ("#c6dbef", "#c7e9c0", "#fdd0a2", "#dadaeb", "#fcbba1", "#d9d9d9", "#fee391", "#ccebc5", "#bcbddc")


def _count_text(n: int) -> str:
  return f"x {n}" if n > 1 else ""


def _scaled(value: int, units=((1e9, "G"), (1e6, "M"), (1e3, "K"))) -> str:
  for size, unit in units:
    if value >= size:
      return f"{value / size:.3g} {unit}"
  return str(value)


def render(figures: list[dict], out: str) -> None:
  """Draw `figures` (figure_data of each model) side by side into `out` (.png, .svg or .pdf)."""
  import matplotlib.patches as patches

  stages = list(dict.fromkeys(b["stage"] for f in figures for b in f["boxes"] if b["kind"] != "aux"))
  colours = {stage: PALETTE[i % len(PALETTE)] for i, stage in enumerate(stages)}
  rows = max(sum(b["kind"] != "aux" for b in f["boxes"]) for f in figures) + 1
  # each column's width: auxiliary heads branch off to the right of theirs
  steps = [COLUMN_W * (1.9 if any(b["kind"] == "aux" for b in f["boxes"]) else 1) + 2.5 for f in figures]
  width = sum(steps)
  legend = "numbers left of a column: the side of its output maps where it changes"
  if any(f["shortcuts"] for f in figures):
    legend += "; arcs: shortcuts, solid where identities, dotted where they change dimensions (zero-padding or projection)"
  legend = textwrap.fill(legend, int(width / INCH * 18))  # about 18 characters of 6-point text to the inch
  height = rows * (BOX_H + GAP) + 2.6 + 0.7 * legend.count("\n")
  with metrics.figure(out, figsize=(width / INCH, height / INCH)) as ax:
    ax.set_xlim(0, width)
    ax.set_ylim(-height + 0.4, 0.6)
    ax.set_axis_off()

    def box(x, y, label, colour, w=COLUMN_W):
      ax.add_patch(patches.FancyBboxPatch((x, y - BOX_H / 2), w, BOX_H, boxstyle="round,pad=0,rounding_size=0.25",
                                          facecolor=colour, edgecolor="#444444", linewidth=0.6))  # fmt: skip
      ax.text(x + w / 2, y, label, ha="center", va="center", fontsize=6.5)

    def arrow(start, end, **style):
      ax.annotate("", end, start, arrowprops={"arrowstyle": "-|>", "linewidth": 0.5, "color": "#444444", "mutation_scale": 5, **style})

    for column, fig in enumerate(figures):
      x0 = sum(steps[:column]) + 1.6  # the stage sizes go in the margin on the left
      ys, y = [], 0.0
      h, w, c = fig["input_shape"]
      ax.text(x0 + COLUMN_W / 2, 0, f"image, {h}x{w}x{c}", ha="center", va="center", fontsize=7)
      previous_stage = None
      for box_data in fig["boxes"]:
        if box_data["kind"] == "aux":  # beside the module it reads, off the main path
          ys.append(y)
          box(x0 + COLUMN_W + 1.2, y, box_data["label"], "#eeeeee", w=COLUMN_W * 0.8)
          arrow((x0 + COLUMN_W, y), (x0 + COLUMN_W + 1.2, y))
          continue
        y -= BOX_H + GAP
        ys.append(y)
        box(x0, y, box_data["label"], colours[box_data["stage"]])
        arrow((x0 + COLUMN_W / 2, y + BOX_H / 2 + GAP), (x0 + COLUMN_W / 2, y + BOX_H / 2))
        if box_data["stage"] != previous_stage and box_data["stage"] != "vector":
          ax.text(x0 - 0.25, y, box_data["stage"].split("x")[0], ha="right", va="center", fontsize=6, color="#555555")
        previous_stage = box_data["stage"]
      for s in fig["shortcuts"]:
        top, bottom = ys[s["from"]] + BOX_H / 2 + GAP / 2, ys[s["to"]] - BOX_H / 2 - GAP / 2
        style = "-" if s["kind"] == "identity" else ":"
        ax.add_patch(patches.FancyArrowPatch((x0 + COLUMN_W, top), (x0 + COLUMN_W, bottom), connectionstyle="arc3,rad=-0.35",
                                             arrowstyle="-|>", mutation_scale=5, linestyle=style, linewidth=0.8, color="#333333"))  # fmt: skip
        if s["count"] > 1:
          ax.text(x0 + COLUMN_W + 1.0, (top + bottom) / 2, _count_text(s["count"]), ha="left", va="center", fontsize=7, fontweight="bold")
      bottom = y - BOX_H - GAP
      options = ", ".join(f"{k}={v}" for k, v in fig["options"].items())
      ax.text(x0 + COLUMN_W / 2, bottom, f"{fig['name']}{f' ({options})' if options else ''}\n"
              f"{_scaled(fig['macs'])} multiply-adds, {_scaled(fig['params'])} parameters",
              ha="center", va="top", fontsize=7.5, fontweight="bold")  # fmt: skip
    ax.text(0.3, -height + 0.9, legend, ha="left", va="bottom", fontsize=6, color="#555555")


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
  flags.DEFINE_enum("fold", "auto", ["auto", "yes", "no"], "Fold runs of identical blocks into one with a count; "
                    "auto: when a column would have more than 60 boxes.")  # fmt: skip
  cli.run(main)
