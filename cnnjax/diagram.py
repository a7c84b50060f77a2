"""What a paper-style figure of a network shows, read from the network itself: the data `cnnjax.draw` renders.

Nothing here knows an architecture: the boxes come from the traced computation (the jaxpr the complexity counter
walks: convolutions, matrix products, pools, each under the name of the module it ran in) and the module structure
(which modules are residual blocks, inception modules, auxiliary heads), so every registered model and option gets
its figure. Long runs of identical blocks fold into one with a count (`x 36`), as the papers' tables write them.
`block_data` reads the inside of one block (its branches and what feeds each) from the trace's dataflow.
"""

import dataclasses
import functools
import re
from collections import Counter

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from cnnjax import complexity, models

# Modules drawn as one box whatever runs inside them, by class name: their kind.
WHOLE = {"Inception": "inception", "AuxiliaryClassifier": "aux"}
BLOCKS = ("ResidualBlock",)  # drawn as their convolutions, with the shortcut beside them
POOLS = {"reduce_window_max": "max", "reduce_window_sum": "avg"}
LAYER_NAMES = {"RBFOutput": "RBF"}  # layers whose paper names them otherwise than by their operation
TRAINING_ONLY = ("AuxiliaryClassifier",)  # drawn, but not in the inference cost under the column


@dataclasses.dataclass
class Box:
  label: str
  kind: str  # conv | fc | pool | norm | inception | aux
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


@dataclasses.dataclass(frozen=True)
class Call:
  """A module's first call in the trace."""

  cls: str  # the module's class name
  module: nn.Module
  input_shape: tuple
  output_shape: tuple


NO_CALL = Call("", None, (), ())


@dataclasses.dataclass
class Event:
  """One weighted or pooling operation of the trace, in execution order."""

  scope: tuple[str, ...]
  primitive: str
  in_shape: tuple
  out_shape: tuple
  params: dict
  macs: int = 0


def _shape(var) -> tuple:
  return tuple(getattr(var.aval, "shape", ()))


def _event(eqn, scope: tuple[str, ...]) -> Event:
  """A convolution, matrix product or pool of the trace as an Event."""
  return Event(
    scope=scope,
    primitive=eqn.primitive.name,
    in_shape=_shape(eqn.invars[0]),
    out_shape=_shape(eqn.outvars[0]),
    params=dict(eqn.params) | {"rhs": _shape(eqn.invars[-1])},
    macs=complexity.primitive_macs(eqn),
  )


def _nested(eqn):
  """The jaxpr inside a call the models make (jit and checkpoint wrappers: one branch), else None."""
  subs = list(complexity.sub_jaxprs(eqn))
  return subs[0] if subs and eqn.primitive.name not in ("custom_jvp_call", "custom_vjp_call") else None


def _events(jaxpr, scope: tuple[str, ...], out: list):
  for eqn in jaxpr.eqns:
    here = scope + tuple(p for p in str(eqn.source_info.name_stack).split("/") if p)
    if (sub := _nested(eqn)) is not None:
      _events(sub, here, out)
      continue
    name = eqn.primitive.name
    if name in ("conv_general_dilated", "dot_general") or name in POOLS:
      out.append(_event(eqn, here))
    elif name == "reduce_sum" and tuple(eqn.params.get("axes", ())) == (1, 2):  # a global average pool
      out.append(Event(here, "global_avg", in_shape=_shape(eqn.invars[0]), out_shape=_shape(eqn.outvars[0]), params={}))


def _trace(model, shape: tuple):
  """(the jaxpr of a training forward pass on one example of `shape`, {module path: Call} of every module's first
  call, the variables' shapes), from one trace: of init, which runs the
  forward pass (its initialisers read no input, so nothing they compute is fed by it)."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    result = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path not in calls:
      first = jax.tree.leaves(result)[0] if jax.tree.leaves(result) else None
      calls[context.module.path] = Call(
        cls=type(context.module).__name__,
        module=context.module,
        input_shape=tuple(args[0].shape) if args else (),
        output_shape=tuple(first.shape) if first is not None else (),
      )
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
  return (
    f"{kh}x{kw} conv, {features}"
    + (f", /{stride}" if stride > 1 else "")
    + (f", {groups} groups" if groups > 1 else "")
  )


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
  return {
    **data,
    "boxes": [dataclasses.asdict(b) for b in data["boxes"]],
    "shortcuts": [{"from": s.start, "to": s.end, "kind": s.kind, "count": s.count} for s in data["shortcuts"]],
  }


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
  in_model = lambda scope: tuple(p for p in (scope[1:] if scope[:1] == (root,) else scope) if "." not in p)
  events = [dataclasses.replace(e, scope=in_model(e.scope)) for e in events]
  boxes, blocks = _boxes(events, modules)
  training_only = {path[0] for path, call in modules.items() if call.cls in TRAINING_ONLY}
  return {
    "name": name,
    "options": complexity.changing_options(name, options),  # what the figure names: what changes the network
    "input_shape": shape,
    "macs": sum(e.macs for e in events if not (e.scope[:1] and e.scope[0] in training_only)),
    "params": complexity.size({k: v for k, v in variables["params"].items() if k not in training_only}),
    "boxes": boxes,
    "shortcuts": _shortcuts(boxes, blocks, modules),
  }


def _boxes(events: list[Event], modules: dict) -> tuple[list[Box], list[tuple]]:
  """The column's boxes, and (block path, index of its first box) of every residual block."""
  boxes, blocks, done_whole = [], [], set()
  for event in events:
    top = event.scope[:1]
    call = modules.get(top, NO_CALL)
    if call.cls in WHOLE:
      if top not in done_whole:  # one box for the module, at its first operation
        done_whole.add(top)
        width = call.output_shape[-1]
        label = (
          f"{top[0].replace('_', ' ')}, {width}" if call.cls == "Inception" else f"auxiliary classifier, fc {width}"
        )
        boxes.append(
          Box(label, WHOLE[call.cls], stage=_stage(call.output_shape), output_shape=call.output_shape, scope=top[0])
        )
      continue
    if event.primitive in POOLS or event.primitive == "global_avg":
      window = event.params.get("window_dimensions", (1, 2, 2, 1))
      if event.primitive != "global_avg" and window[1] * window[2] == 1:  # a window over channels only: LRN
        where = top[0] if top else ""
        boxes.append(Box("local response norm", "norm", _stage(event.out_shape), event.out_shape, scope=where))
        continue
      what = "subsampling, /2" if call.cls == "Subsampling" else _pool_label(event)
      label = f"{_paper_name(top[0]) if top else ''}{what}"
      boxes.append(
        Box(label, "pool", stage=_stage(event.out_shape), output_shape=event.out_shape, scope=top[0] if top else "")
      )
      continue
    if event.primitive == "dot_general":
      if not top or len(event.params["rhs"]) != 2:
        continue  # a product of activations, not a layer
      kind = LAYER_NAMES.get(call.cls, "fc")  # LeNet-5's output compares with fixed codes: its paper calls it RBF
      label = f"{_paper_name(top[0])}{kind} {event.out_shape[-1]}"
      boxes.append(Box(label, "fc", stage="vector", output_shape=event.out_shape, scope=top[0]))
      continue
    # a convolution: one box per unit (a residual block's convolutions, or a top-level layer); LeNet's sparse C3
    # runs one convolution per map: one box for the layer
    unit = event.scope[:2] if call.cls in BLOCKS else top
    if call.cls in BLOCKS and "projection" in event.scope:
      continue  # drawn as the shortcut
    out_shape = modules.get(unit, NO_CALL).output_shape or event.out_shape
    if boxes and boxes[-1].scope == "/".join(unit):
      boxes[-1].output_shape, boxes[-1].stage = out_shape, _stage(out_shape)
      continue
    label = f"{_paper_name(top[0])}{_conv_label(event, out_shape[-1])}"
    boxes.append(Box(label, "conv", stage=_stage(out_shape), output_shape=out_shape, scope="/".join(unit)))
    if call.cls in BLOCKS and (not blocks or blocks[-1][0] != top):
      blocks.append((top, len(boxes) - 1))
  return boxes, blocks


def _shortcuts(boxes: list[Box], blocks: list[tuple], modules: dict) -> list[Shortcut]:
  """An arc from the first to the last box of every residual block, of the kind its shortcut is."""
  shortcuts = []
  for top, first in blocks:
    call = modules[top]
    if not call.module.residual:
      continue
    last = max(i for i, b in enumerate(boxes) if b.scope.split("/")[0] == top[0])
    projected = any(path[:1] == top and path[-1:] == ("projection",) for path in modules) or call.module.shortcut == "C"
    kind = "projection" if projected else ("zero_pad" if call.input_shape != call.output_shape else "identity")
    shortcuts.append(Shortcut(first, last, kind))
  return shortcuts


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
    out_shortcuts.append(Shortcut(start, len(out_boxes) - 1, kind=span.kind, count=len(run)))
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


def block_panels(name: str, block: str, **options) -> list[dict]:
  """The panels `--block` draws: an inception module in both variants (GoogLeNet Fig. 2 a and b), else the block."""
  panel = block_data(name, block, **options)
  if panel["kind"] != "Inception" or "inception" in options:
    return [panel]
  # each panel says which variant it is (its options name only what differs from the model as built)
  return [
    {**block_data(name, block, **options, inception=v), "variant": f"inception={v}"} for v in ("naive", "reduced")
  ]


FROM_INPUT = -2  # dataflow mark: derived from the model's input (parameters carry none)


def block_data(name: str, block: str, **options) -> dict:
  """The inside of the module `block` of model `name`: its operations (convolutions, pools) with what feeds each,
  their shapes and multiply-adds, read from the dataflow of the traced computation.

  {"block", "kind", "input_shape", "output_shape", "macs", "nodes": [{"label", "out_shape", "macs", "inputs"}]};
  `inputs` are node indices, -1 for the block's input. `kind`: the module's class (Inception, ResidualBlock ...).
  """
  model = models.create(name, **options)
  jaxpr, modules, _ = _trace(model, models.input_shape(name))
  if (block,) not in modules:
    layers = [p[0] for p in modules if len(p) == 1]
    raise ValueError(f"{name} has no layer {block!r}; its layers: {', '.join(layers)}")
  call, nodes = modules[(block,)], []
  # (the image is the traced function's last argument)
  _block_nodes(jaxpr, (), producers={jaxpr.invars[-1]: {FROM_INPUT}}, block=(type(model).__name__, block), nodes=nodes)
  return {
    "model": name,
    "block": block,
    "kind": call.cls,
    "options": complexity.changing_options(name, options),
    "input_shape": call.input_shape,
    "output_shape": call.output_shape,
    "macs": sum(n["macs"] for n in nodes),
    "nodes": nodes,
  }


def _block_nodes(jaxpr, scope: tuple, producers: dict, block: tuple[str, str], nodes: list) -> None:
  """Walk the dataflow: `producers` maps each variable to the nodes (or FROM_INPUT) it derives from; the layers
  inside `block` (model class, block name) are appended to `nodes` with the nodes that feed them."""
  sources = lambda variables: [producers.get(v, set()) for v in variables if not isinstance(v, jex_core.Literal)]
  for eqn in jaxpr.eqns:
    here = scope + tuple(p for p in str(eqn.source_info.name_stack).split("/") if p and "." not in p)
    inside = here[:2] == block
    feeding = set().union(*sources(eqn.invars))
    if inside:  # what reaches the block from the model's input, through anything outside it, is the block's input
      feeding = {-1 if p == FROM_INPUT else p for p in feeding}
    if (sub := _nested(eqn)) is not None:
      inner = {
        s: producers.get(v, set()) if not isinstance(v, jex_core.Literal) else set()
        for s, v in zip(sub.invars, eqn.invars[-len(sub.invars) :])
      }
      _block_nodes(sub, here, producers=inner, block=block, nodes=nodes)
      for outer, v in zip(eqn.outvars, sub.outvars):
        producers[outer] = inner.get(v, feeding) if not isinstance(v, jex_core.Literal) else set()
      continue
    window = eqn.params.get("window_dimensions", (1, 2, 2, 1))
    is_conv = eqn.primitive.name == "conv_general_dilated"
    if inside and (is_conv or (eqn.primitive.name in POOLS and window[1] * window[2] > 1)):
      event = _event(eqn, here)
      label = _conv_label(event, event.out_shape[-1]) if is_conv else _pool_label(event)
      label = f"shortcut: {label}" if "projection" in here else label
      unit = "/".join(here[2:-1])
      nodes.append(
        {"label": label, "unit": unit, "out_shape": event.out_shape, "macs": event.macs, "inputs": sorted(feeding)}
      )
      feeding = {len(nodes) - 1}
    for v in eqn.outvars:
      producers[v] = feeding


def depth(panel: dict, i: int) -> int:
  inputs = [j for j in panel["nodes"][i]["inputs"] if j >= 0]
  return 1 + max(depth(panel, j) for j in inputs) if inputs else 0


def scaled(value: int, units=((1e9, "G"), (1e6, "M"), (1e3, "K"))) -> str:
  """A count as figures write it: 3.6 G, 21.8 M."""
  for size, unit in units:
    if value >= size:
      return f"{value / size:.3g} {unit}"
  return str(value)
