"""The papers' learning-rate schedules and their optimizer: SGD with momentum and coupled weight decay."""

import jax
import optax


def schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The paper's schedule: 'constant', 'step' (x lr_decay_factor at lr_decay_steps or lr_decay_epochs),
  'exponential' (x lr_decay_factor every lr_decay_every_epochs, GoogLeNet's 4% every 8 epochs) or
  'cosine', after an optional warm-up: 'linear' from 0, or 'constant' at warmup_lr (ResNet-110's 0.01).
  The decays of 'step' and 'exponential' count from the first step, warm-up included, as PyTorch's MultiStepLR and
  StepLR chained after a ConstantLR warm-up do; 'cosine' spans the steps after the warm-up."""
  lr = config.learning_rate
  warmup = config.warmup_steps or round(config.warmup_epochs * steps_per_epoch)
  total = total_steps(config, steps_per_epoch)
  if config.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif config.schedule == "step":
    boundaries = list(config.lr_decay_steps) or [round(e * steps_per_epoch) for e in config.lr_decay_epochs]
    main = optax.piecewise_constant_schedule(lr, {b - warmup: config.lr_decay_factor for b in boundaries})
  elif config.schedule == "exponential":
    every, factor = round(config.lr_decay_every_epochs * steps_per_epoch), config.lr_decay_factor
    main = lambda count: lr * factor ** ((count + warmup) // every)  # x factor at every, 2 x every, ... steps
  elif config.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total - warmup, 1))
  else:
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: constant, step, exponential, cosine")
  if not warmup:
    return main
  if config.warmup_type == "linear":
    ramp = optax.linear_schedule(0.0, lr, warmup)
  elif config.warmup_type == "constant":
    ramp = optax.constant_schedule(config.warmup_lr)
  else:
    raise ValueError(f"unknown warmup_type {config.warmup_type!r}; valid: linear, constant")
  return optax.join_schedules([ramp, main], [warmup])


def sgd(config, learning_rate_fn, classifier: str | None = None) -> optax.GradientTransformation:
  """SGD with momentum and weight decay added to the gradient (PyTorch's and Caffe's coupled form). With a
  `classifier` (trainable='head'), every other layer is frozen: its update, weight decay included, is zero."""
  sgd = optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(learning_rate_fn, momentum=config.momentum or None, nesterov=config.nesterov),
  )
  if classifier is None:
    return sgd
  frozen = lambda params: {k: jax.tree.map(lambda _, layer=k: layer != classifier, v) for k, v in params.items()}
  return optax.chain(sgd, optax.masked(optax.set_to_zero(), frozen))


def total_steps(config, steps_per_epoch: int) -> int:
  return config.num_steps or round(config.num_epochs * steps_per_epoch)
