"""Parameters, multiply-adds and depth of any model, read from its traced computation without running it.

The conventions are the papers' and torchvision's (docs/reference.md, section 0):
- parameters are the trainable ones (the 'params' collection): BatchNorm running statistics are buffers;
- one multiply-add (MAC) is one multiply-accumulate, and only convolutions and matrix products count
  (no bias, norm, activation or pooling). A conv costs out_elements * (in_channels / groups) * k * k,
  zero padding included. torchvision's "GFLOPS" and the ResNet paper's "FLOPs" are these MACs;
- depth is the number of weighted layers (conv, dense) on the longest path from input to output,
  the way the papers count it ("22 layers deep when counting only layers with parameters").

Everything is counted for one example (batch 1). Work is attributed to the model's top-level child
modules through JAX's name stack; `stage_of` folds a paper's numbered layers (conv3_1, conv3_2) into
their stage (conv3_x).
"""

import dataclasses
import math
import re
from collections import defaultdict

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from cnnjax import models

_WEIGHTED = ("conv_general_dilated", "dot_general")


def primitive_macs(eqn) -> int:
  """Multiply-adds of one conv_general_dilated or dot_general equation; 0 for anything else."""
  name = eqn.primitive.name
  out = eqn.outvars[0].aval.shape
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    rhs_out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    # every output element sums over (in_channels / groups) * prod(kernel spatial) products
    return math.prod(out) * (math.prod(rhs) // rhs_out_features)
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
  return 0


def sub_jaxprs(eqn):
  """The jaxprs an equation calls (jit, custom_jvp, remat, cond branches ...)."""
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _walk(jaxpr, in_depths, scope, macs_by_scope):
  """Accumulate MACs per name-stack scope; return the weighted-layer depth of each output."""
  depth = dict(zip(jaxpr.invars, in_depths))

  def depth_of(v):
    return 0 if isinstance(v, jex_core.Literal) else depth.get(v, 0)

  for eqn in jaxpr.eqns:
    here = "/".join(p for p in (scope, str(eqn.source_info.name_stack)) if p)
    deepest_input = max((depth_of(v) for v in eqn.invars), default=0)
    subs = list(sub_jaxprs(eqn))
    if eqn.primitive.name in ("scan", "while"):
      raise NotImplementedError(f"{eqn.primitive.name}: loops are not counted; unroll the model's layers")
    if subs:
      # a call (jit, custom_jvp, remat, cond branches): count the costliest branch once
      results = []
      for sub in subs:
        sub_macs = defaultdict(int)
        outs = _walk(sub, [depth_of(v) for v in eqn.invars[-len(sub.invars) :]], scope=here, macs_by_scope=sub_macs)
        results.append((sum(sub_macs.values()), outs, sub_macs))
      _, outs, sub_macs = max(results, key=lambda r: r[0])
      for k, v in sub_macs.items():
        macs_by_scope[k] += v
      out_depths = outs if len(outs) == len(eqn.outvars) else [max(outs, default=deepest_input)] * len(eqn.outvars)
    else:
      macs = primitive_macs(eqn)
      macs_by_scope[here] += macs
      out_depths = [deepest_input + (eqn.primitive.name in _WEIGHTED)] * len(eqn.outvars)
    depth.update(zip(eqn.outvars, out_depths))
  return [depth_of(v) for v in jaxpr.outvars]


def trace(fn, *args) -> tuple[dict, list, object]:
  """Trace fn(*args) abstractly (args may be ShapeDtypeStructs) without running it.

  Returns ({name scope: MACs} in forward order, [weighted-layer depth of each flat output], the shapes fn returns).
  """
  closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
  by_scope = defaultdict(int)
  depths = _walk(closed.jaxpr, [0] * len(closed.jaxpr.invars), scope="", macs_by_scope=by_scope)
  return dict(by_scope), depths, shapes


def stage_of(name: str) -> str:
  """The stage a top-level layer belongs to: 'conv3_2' -> 'conv3_x'; other names are their own stage."""
  return re.sub(r"_\d+$", "_x", name)


@dataclasses.dataclass(frozen=True)
class Cost:
  """What a model costs on one example: totals and, per top-level layer, parameters and MACs."""

  params: int
  macs: int
  depth: int
  params_by_layer: dict
  macs_by_layer: dict

  def by_stage(self) -> dict:
    """{stage: (params, macs)} in forward order, numbered layers folded into their stage."""
    stages = {}
    for layer in list(self.macs_by_layer) + [k for k in self.params_by_layer if k not in self.macs_by_layer]:
      p, m = stages.get(stage_of(layer), (0, 0))
      stages[stage_of(layer)] = (p + self.params_by_layer.get(layer, 0), m + self.macs_by_layer.get(layer, 0))
    return stages


def initialise(model, train: bool):
  """x -> (the model's output, its variables): init runs the forward pass anyway, so one trace gives both."""
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return lambda x: model.init_with_output(rngs, x, train=train)


def changing_options(name: str, options: dict) -> dict:
  """Those of `options` that change model `name`'s computation: an option at its default, or one the rest of the
  model makes inert (a shortcut option of a plain net), leaves the traced program as it is without it."""
  defaults = models.defaults(name)
  options = {k: v for k, v in options.items() if k not in defaults or v != defaults[k]}
  program = lambda given: str(
    jax.make_jaxpr(initialise(models.create(name, **given), train=True))(
      jax.ShapeDtypeStruct((1, *models.input_shape(name)), jnp.float32)
    )
  )
  everything = program(options)
  return {k: v for k, v in options.items() if program({o: w for o, w in options.items() if o != k}) != everything}


def abstract_init(model, input_shape, train=False, batch=1):
  """(the model's output, its variables) as shapes only (jax.eval_shape), from one trace: nothing is allocated or
  run."""
  return jax.eval_shape(initialise(model, train), jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32))


def abstract_variables(model, input_shape, train=False, batch=1):
  """The model's variables as shapes only (jax.eval_shape): nothing is allocated or run."""
  return abstract_init(model, input_shape, train=train, batch=batch)[1]


def size(tree) -> int:
  """Number of scalars in a pytree of arrays or shapes."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def count_params(model, input_shape, train=False) -> int:
  """Trainable parameters (the 'params' collection) of `model` built for inputs of `input_shape` (H, W, C)."""
  return size(abstract_variables(model, input_shape, train)["params"])


def cost(model, input_shape, train=False) -> Cost:
  """Parameters, multiply-adds and depth of `model` on one example of `input_shape` (H, W, C).

  `train=True` counts what exists only in training (GoogLeNet's auxiliary classifiers).
  """
  # one trace of init, which runs the forward pass: its initialisers add no convolution or product and no depth
  # (they do not read the input), so it counts what an apply would, and gives the variables besides
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  by_scope, depths, (_, variables) = trace(initialise(model, train), x)
  macs = sum(by_scope.values())
  depth = depths[0]  # the main logits come first; auxiliary heads branch off and end early
  macs_by_layer = defaultdict(int)
  for scope, m in by_scope.items():  # scopes arrive in forward order
    parts = scope.split("/")
    if len(parts) > 1 or m:  # the root's own glue (pooling, reshapes) is no layer unless it computes
      macs_by_layer[parts[1] if len(parts) > 1 else parts[0]] += m
  params_by_layer = {name: size(tree) for name, tree in variables["params"].items()}
  return Cost(
    params=sum(params_by_layer.values()),
    macs=macs,
    depth=depth,
    params_by_layer=params_by_layer,
    macs_by_layer=dict(macs_by_layer),
  )
