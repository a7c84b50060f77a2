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
from jax.extend import core as jex_core

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
    shape = lambda v: tuple(getattr(v.aval, "shape", ()))
    if name in ("conv_general_dilated", "dot_general") or name in POOLS:
      out.append(Event(here, name, shape(eqn.invars[0]), shape(eqn.outvars[0]), dict(eqn.params) | {"rhs": shape(eqn.invars[-1])},
                       complexity.primitive_macs(eqn)))  # fmt: skip
    elif name == "reduce_sum" and tuple(eqn.params.get("axes", ())) == (1, 2):  # a global average pool
      out.append(Event(here, "global_avg", shape(eqn.invars[0]), shape(eqn.outvars[0]), {}))


def _trace(model, shape: tuple):
  """(the jaxpr of a training forward pass on one example of `shape`, {module path: (class name, module, input shape,
  output shape)} of every module's first call, the variables' shapes), from one trace: of init, which runs the
  forward pass (its initialisers read no input, so nothing they compute is fed by it)."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    result = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path not in calls:
      first = jax.tree.leaves(result)[0] if jax.tree.leaves(result) else None
      calls[context.module.path] = (type(context.module).__name__, context.module, tuple(args[0].shape) if args else (),
                                    tuple(first.shape) if first is not None else ())  # fmt: skip
    return result

  forward = complexity.initialise(model, train=True)
  with nn.intercept_methods(record):
    closed, (_, variables) = jax.make_jaxpr(forward, return_shape=True)(jax.ShapeDtypeStruct((1, *shape), jnp.float32))
  return closed.jaxpr, calls, variables


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
  if strides[1] > 1:
    return f"{'pool' if event.primitive == 'reduce_window_max' else 'avg pool'}, /{strides[1]}"
  return f"{window[1]}x{window[2]} {'max' if event.primitive == 'reduce_window_max' else 'avg'} pool"


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
  jaxpr, modules, variables = _trace(model, shape)
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
    signature = lambda s: ([(b.label, b.output_shape) for b in boxes[s.start : s.end + 1]], s.kind)
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
  from matplotlib import patches

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


def block_panels(name: str, block: str, **options) -> list[dict]:
  """The panels `--block` draws: an inception module in both variants (GoogLeNet Fig. 2 a and b), else the block."""
  panel = block_data(name, block, **options)
  if panel["kind"] != "Inception" or "inception" in options:
    return [panel]
  return [block_data(name, block, **options, inception="naive"), block_data(name, block, **options, inception="reduced")]


def draw_block(names: list[str], block: str, options: dict, out: str) -> None:
  if len(names) != 1:
    raise app.UsageError("--block draws one model's block: give one --model")
  panels = block_panels(names[0], block, **options)
  if out.endswith(".json"):
    with open(out, "w") as f:
      json.dump({"blocks": panels}, f, indent=1)
  else:
    render_blocks(panels, out)
  ratio = f"; {panels[0]['macs'] / panels[1]['macs']:.2f}x the multiply-adds of the reduced one" if len(panels) == 2 else ""
  print(f"wrote {out}: {names[0]} {block} ({', '.join(_scaled(p['macs']) for p in panels)} multiply-adds{ratio})")


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
    return draw_block(names, FLAGS.block, options, FLAGS.out)
  fold = {"auto": None, "yes": True, "no": False}[FLAGS.fold]
  figures = [figure_data(name, fold, **options) for name in names]
  if FLAGS.out.endswith(".json"):
    with open(FLAGS.out, "w") as f:
      json.dump({"models": figures}, f, indent=1)
  else:
    render(figures, FLAGS.out)
  drawn = ", ".join(f"{f['name']} ({len(f['boxes'])} boxes)" for f in figures)
  print(f"wrote {FLAGS.out}: {drawn}")


FROM_INPUT = -2  # dataflow mark: derived from the model's input (parameters carry none)


def block_data(name: str, block: str, **options) -> dict:
  """The inside of the module `block` of model `name`: its operations (convolutions, pools) with what feeds each,
  their shapes and multiply-adds, read from the dataflow of the traced computation.

  {"block", "kind", "input_shape", "output_shape", "macs", "nodes": [{"label", "out_shape", "macs", "inputs"}]};
  `inputs` are node indices, -1 for the block's input. `kind`: the module's class (Inception, ResidualBlock ...).
  """
  model = models.create(name, **options)
  shape = models.input_shape(name)
  jaxpr, modules, _ = _trace(model, shape)
  if (block,) not in modules:
    layers = [p[0] for p in modules if len(p) == 1]
    raise ValueError(f"{name} has no layer {block!r}; its layers: {', '.join(layers)}")
  cls, _, block_in, block_out = modules[(block,)]
  nodes = []
  root = type(model).__name__

  def walk(jaxpr, scope, producers):
    for eqn in jaxpr.eqns:
      here = scope + tuple(p for p in str(eqn.source_info.name_stack).split("/") if p and "." not in p)
      inside = here[:2] == (root, block)
      feeding = set().union(*(producers.get(v, set()) for v in eqn.invars if not isinstance(v, jex_core.Literal)))
      if inside:  # what reaches the block from the model's input, through anything outside it, is the block's input
        feeding = {-1 if p == FROM_INPUT else p for p in feeding}
      subs = list(complexity.sub_jaxprs(eqn))
      if subs and eqn.primitive.name not in ("custom_jvp_call", "custom_vjp_call"):
        sub = subs[0]
        inner = {s: producers.get(v, set()) if not isinstance(v, jex_core.Literal) else set()
                 for s, v in zip(sub.invars, eqn.invars[-len(sub.invars):])}  # fmt: skip
        walk(sub, here, inner)
        for outer, v in zip(eqn.outvars, sub.outvars):
          producers[outer] = inner.get(v, feeding) if not isinstance(v, jex_core.Literal) else set()
        continue
      name_ = eqn.primitive.name
      window = eqn.params.get("window_dimensions", (1, 2, 2, 1))
      is_layer = name_ == "conv_general_dilated" or (name_ in POOLS and window[1] * window[2] > 1)
      if inside and is_layer:
        event = Event(here, name_, tuple(eqn.invars[0].aval.shape), tuple(eqn.outvars[0].aval.shape),
                      dict(eqn.params) | {"rhs": tuple(eqn.invars[-1].aval.shape)}, complexity.primitive_macs(eqn))  # fmt: skip
        label = _conv_label(event, event.out_shape[-1]) if name_ == "conv_general_dilated" else _pool_label(event)
        label = f"shortcut: {label}" if "projection" in here else label
        nodes.append({"label": label, "unit": "/".join(here[2:-1]), "out_shape": event.out_shape, "macs": event.macs,
                      "inputs": sorted(feeding)})  # fmt: skip
        for v in eqn.outvars:
          producers[v] = {len(nodes) - 1}
      else:
        for v in eqn.outvars:
          producers[v] = feeding
  walk(jaxpr, (), {jaxpr.invars[-1]: {FROM_INPUT}})  # (the image is the traced function's last argument)
  return {"model": name, "block": block, "kind": cls, "options": options, "input_shape": block_in,
          "output_shape": block_out, "macs": sum(n["macs"] for n in nodes), "nodes": nodes}  # fmt: skip


def _shape_text(shape: tuple) -> str:
  return "x".join(map(str, shape[1:]))


def render_blocks(panels: list[dict], out: str) -> None:
  """Draw the inside of one block per panel (block_data), side by side: its input, its branches (one column per
  path from the input, each with its multiply-adds), what joins them, and a shortcut that has no layer."""
  from matplotlib import patches

  def column_of(panel):
    roots, columns = [], []
    for node in panel["nodes"]:
      first = node["inputs"][0] if node["inputs"] else -1
      if first == -1:
        roots.append(len(columns))
        columns.append(len(roots) - 1)
      else:
        columns.append(columns[first])
    return columns, len(roots)

  layouts = [column_of(p) for p in panels]
  widths = [max(n, 1) * 7.5 + (3.0 if p["kind"] == "ResidualBlock" else 0) + 1.5 for p, (_, n) in zip(panels, layouts)]
  depth = [max([_depth(p, i) for i in range(len(p["nodes"]))], default=0) for p in panels]
  rows = max(depth) + 3
  width, height = sum(widths), rows * 3.2 + 4.5
  with metrics.figure(out, figsize=(width / INCH, height / INCH)) as ax:
    ax.set_xlim(0, width)
    ax.set_ylim(-height, 1.0)
    ax.set_axis_off()
    for k, (panel, (columns, count)) in enumerate(zip(panels, layouts)):
      left = sum(widths[:k]) + 0.75
      centre = left + count * 7.5 / 2
      def place(x, y, text, colour, w=6.4):
        ax.add_patch(patches.FancyBboxPatch((x - w / 2, y - 1.1), w, 2.2, boxstyle="round,pad=0,rounding_size=0.3",
                                            facecolor=colour, edgecolor="#444444", linewidth=0.6))  # fmt: skip
        ax.text(x, y, text, ha="center", va="center", fontsize=8)
      def link(a, b, **style):
        ax.annotate("", b, a, arrowprops={"arrowstyle": "-|>", "linewidth": 0.6, "color": "#444444", "mutation_scale": 6, **style})
      title = f"{panel['model']} {panel['block']}" + (f" ({', '.join(f'{k}={v}' for k, v in panel['options'].items())})" if panel["options"] else "")
      ax.text(centre, 0.2, f"{title}\n{_scaled(panel['macs'])} multiply-adds", ha="center", va="bottom", fontsize=9, fontweight="bold")
      y_in = -2.0
      place(centre, y_in, f"input\n{_shape_text(panel['input_shape'])}", "#eeeeee")
      positions = []
      for i, node in enumerate(panel["nodes"]):
        x = left + columns[i] * 7.5 + 3.75
        y = y_in - 3.2 * (_depth(panel, i) + 1)
        positions.append((x, y))
        colour = "#c6dbef" if node["label"].endswith("conv") or "conv" in node["label"] else "#fdd0a2"
        place(x, y, f"{node['label']}\n{_shape_text(node['out_shape'])}", colour)
        for source in node["inputs"]:
          start = (centre, y_in - 1.1) if source == -1 else (positions[source][0], positions[source][1] - 1.1)
          link(start, (x, y + 1.1))
      y_out = y_in - 3.2 * (max([_depth(panel, i) for i in range(len(panel["nodes"]))], default=0) + 2)
      join = "filter concatenation" if panel["kind"] == "Inception" else "addition, then the activation"
      place(centre, y_out, f"{join}\n{_shape_text(panel['output_shape'])}", "#eeeeee", w=max(6.4, count * 7.5 - 1))
      used = {s for n in panel["nodes"] for s in n["inputs"]}
      for i, (x, y) in enumerate(positions):
        if i not in used:
          link((x, y - 1.1), (x, y_out + 1.1))
      for c in range(count):  # each branch's cost under it
        macs = sum(n["macs"] for n, col in zip(panel["nodes"], columns) if col == c)
        ax.text(left + c * 7.5 + 3.75, y_out - 1.6, f"{_scaled(macs)}", ha="center", va="top", fontsize=8, color="#555555")
      if panel["kind"] == "ResidualBlock" and not any("projection" in n["unit"] for n in panel["nodes"]):
        kind = "identity" if panel["input_shape"] == panel["output_shape"] else "zero-padded identity"
        x = left + count * 7.5 + 1.2
        ax.add_patch(patches.FancyArrowPatch((centre + 3.2, y_in), (centre + max(3.2, count * 7.5 / 2 - 0.5), y_out),
                                             connectionstyle="arc3,rad=-0.4", arrowstyle="-|>", mutation_scale=6,
                                             linewidth=0.8, linestyle="-" if kind == "identity" else ":", color="#333333"))  # fmt: skip
        ax.text(x + 0.6, (y_in + y_out) / 2, kind, ha="left", va="center", fontsize=8)
    note = "under each branch: its multiply-adds"
    if len(panels) == 2:
      note += f"; the {panels[0]['options'].get('inception', '')} module costs {panels[0]['macs'] / panels[1]['macs']:.2f}x the {panels[1]['options'].get('inception', '')} one"
    ax.text(0.3, -height + 0.3, note, ha="left", va="bottom", fontsize=8, color="#333333")


def _depth(panel: dict, i: int) -> int:
  inputs = [j for j in panel["nodes"][i]["inputs"] if j >= 0]
  return 1 + max(_depth(panel, j) for j in inputs) if inputs else 0


if __name__ == "__main__":
  flags.DEFINE_string("model", "vgg19,plain34,resnet34", "Models to draw side by side, comma-separated (any zoo name).")
  flags.DEFINE_string("options", "", "Model options for every model: KEY=VALUE,... (shortcut=C, preactivation=True).")
  flags.DEFINE_string("out", "architectures.png", "The figure: .png, .svg or .pdf, or .json for the data drawn.")
  flags.DEFINE_string("block", None, "Draw the inside of this layer of one model instead (inception_3a: naive beside "
                      "reduced; conv3_1 of a ResNet: its block and shortcut).")  # fmt: skip
  flags.DEFINE_enum("fold", "auto", ["auto", "yes", "no"], "Fold runs of identical blocks into one with a count; "
                    "auto: when a column would have more than 60 boxes.")  # fmt: skip
  cli.run(main)
