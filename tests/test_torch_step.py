"""A training step of cnnjax is a training step of PyTorch, to rounding, for every family with a PyTorch twin.

The reference is PyTorch's own training arithmetic, set up here from the config's numbers and nothing of cnnjax:
`torch.optim.SGD` (momentum 0.9, no dampening, weight decay added to the gradient), `nn.BatchNorm2d` in training
mode (momentum 0.1, the running variance unbiased), the learning rate from `torch.optim.lr_scheduler`
(ConstantLR for the warm-up chained with MultiStepLR or StepLR for the decay), the mean cross-entropy, and for
GoogLeNet the paper's auxiliary loss, 0.3 x each head's (section 5). cnnjax's side is its own from end to end:
the family's config, `train.build` (its optimizer and schedule), the pmapped `train_step` on two of the suite's
simulated devices (so BatchNorm's statistics are synchronised over them).

Both start from the same weights (torchvision's model, or the PyTorch peer of cnnjax/bench_torch.py, with random
weights, read into cnnjax by `pretrained.load_state`) and take the same batches in float64 with dropout off; the
steps cross a warm-up and a decay boundary. After every step the parameters, the momentum buffers and BatchNorm's
running statistics agree to 1e-10 of each tensor's largest entry (they agree to about 1e-13; float32 would miss by
1e-7), and cnnjax's next step starts from PyTorch's state: left to run apart, a random network at the papers' rates
on eight random images multiplies any rounding by about 100 a step (ResNet-50, measured: 1e-13 after the first
step, 1e-11 after the second, 2e-9 after the third), so a free run would test chaos, not arithmetic.
`test_a_planted_mistake_fails_the_comparison` plants, one at a time, the mistakes this arithmetic invites and
checks each is caught where it first shows.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch", reason="compares with PyTorch's training step: pip install -e '.[torch]'")
pytest.importorskip("torchvision", reason="compares with torchvision's models: pip install -e '.[torch]'")

from cnnjax import bench_torch, convert, data, models, optim, train  # noqa: E402
from cnnjax.devices import device_mesh, replicate  # noqa: E402
from cnnjax.models import layers, pretrained  # noqa: E402

from helpers import load_config  # noqa: E402
from torch_twins import randomize, torchvision_model  # noqa: E402

STEPS = 4  # step 0 at the warm-up's rate, 1 and 2 at the full rate, 3 after the decay boundary (2 for GoogLeNet's)
BATCH = 8
DEVICES = 2  # four examples on each, BatchNorm's statistics synchronised over both (eight copies of VGG: 9 GB)
FC_WIDTH = 64  # AlexNet's and VGG's 4096-wide fully-connected layers narrowed on both sides, to keep the test small
CLASSES = 10
TOLERANCE = 1e-10
AUX_WEIGHT = 0.3  # GoogLeNet, section 5: "the loss of the auxiliary classifiers was weighted by 0.3"
# the input sizes: small, but with maps of more than one position where BatchNorm works on them
SIZES = {"alexnet_torchvision": 64, "vgg11_bn": 32, "googlenet_torchvision": 64, "resnet18": 32, "resnet50": 32}


def twin(name: str, seed: int = 0):
  """PyTorch's network `name`, random, in float64, dropout off: torchvision's, or the peer's."""
  if name in pretrained.TORCHVISION:
    model = torchvision_model(name, seed, num_classes=CLASSES)
    if hasattr(model, "classifier"):  # AlexNet, VGG: fc6 and fc7 FC_WIDTH wide, the layout otherwise torchvision's
      linear = [i for i, m in enumerate(model.classifier) if isinstance(m, torch.nn.Linear)]
      widths = [model.classifier[linear[0]].in_features, FC_WIDTH, FC_WIDTH, CLASSES]
      for i, fan_in, fan_out in zip(linear, widths, widths[1:]):
        model.classifier[i] = torch.nn.Linear(fan_in, fan_out)
      randomize(model, seed)
  else:
    model = randomize(bench_torch.build(name)[0], seed)
  for module in model.modules():
    if isinstance(module, torch.nn.Dropout):
      module.p = 0.0
  return model.double()


def cnnjax_config(name: str, trainable: str = "all"):
  """The family's own config for `name`, on random images of this test's size, in float64, dropout off (and
  AlexNet's and VGG's fully-connected layers FC_WIDTH wide), over STEPS steps that cross a warm-up (at a tenth of
  the rate) and a decay."""
  if name in pretrained.TORCHVISION:
    config = convert.family_config(name)
    options = models.defaults(name)
    off = {"dropout": 0.0, "aux_dropout": 0.0, "fc_width": FC_WIDTH}
    config.model_options.update({**pretrained.TORCHVISION[name], **{k: v for k, v in off.items() if k in options}})
  else:
    config = load_config("cifar_resnet", name.removeprefix("resnet"))
  size = SIZES.get(name, 32)
  config.update(
    dataset=f"fake:{size}x{size}x3:{CLASSES}",
    image_size=size,
    batch_size=BATCH,
    dtype="float64",
    num_steps=STEPS,
    num_epochs=0,
    warmup_steps=1,
    warmup_epochs=0.0,
    warmup_type="constant",
    warmup_lr=config.learning_rate / 10,
    trainable=trainable,
    augment="none",
  )
  if config.schedule == "step":
    config.lr_decay_steps = (3,)
  else:  # exponential: every 2 steps (the fake dataset's 10,000 images make 1,250 steps per epoch)
    config.lr_decay_every_epochs = 2 / (10_000 // BATCH)
  return config


def torch_optimizer(model, config, trainable: str):
  """torch.optim.SGD and its schedule, from the config's numbers; only the classifier trains with 'head'."""
  params = model.parameters()
  if trainable == "head":
    classifier = model.fc if hasattr(model, "fc") else model.classifier[-1]
    for p in model.parameters():
      p.requires_grad_(False)
    for p in classifier.parameters():
      p.requires_grad_(True)
    params = classifier.parameters()
  sgd = torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay)
  lr = torch.optim.lr_scheduler
  warmup = lr.ConstantLR(sgd, factor=config.warmup_lr / config.learning_rate, total_iters=config.warmup_steps)
  if config.schedule == "step":
    decay = lr.MultiStepLR(sgd, milestones=list(config.lr_decay_steps), gamma=config.lr_decay_factor)
  else:
    decay = lr.StepLR(sgd, step_size=2, gamma=config.lr_decay_factor)
  return sgd, lr.ChainedScheduler([warmup, decay])


def torch_step(model, optimizer, schedule, images, labels):
  optimizer.zero_grad()
  out = model(images)
  if isinstance(out, tuple):  # torchvision's GoogLeNet in training: (logits, aux_logits2, aux_logits1)
    main, *auxiliary = out
    loss = torch.nn.functional.cross_entropy(main, labels)
    loss = loss + AUX_WEIGHT * sum(torch.nn.functional.cross_entropy(a, labels) for a in auxiliary)
  else:
    loss = torch.nn.functional.cross_entropy(out, labels)
  loss.backward()
  optimizer.step()
  schedule.step()


def in_cnnjax_layout(model, name: str, torch_model, replace=None) -> dict:
  """torch_model's tensors (or `replace`'s, by name, where it has them) as cnnjax variables, in float64."""
  state = {k: v for k, v in torch_model.state_dict().items() if not k.endswith("num_batches_tracked")}
  state.update(replace or {})
  state = {k: v.detach().numpy() for k, v in state.items()}
  return pretrained.load_state(models.unsynchronised(model), name, state, dtype=np.float64)


def assert_agree(ours, theirs, what: str):
  paths = jax.tree_util.tree_leaves_with_path(theirs)
  assert len(paths) == len(jax.tree.leaves(ours)), what
  for (path, expected), actual in zip(paths, jax.tree.leaves(ours)):
    expected, actual = np.asarray(expected), np.asarray(actual)
    scale = max(np.abs(expected).max(), 1e-300)
    error = np.abs(actual - expected).max() / scale
    assert actual.dtype == np.float64 and error <= TOLERANCE, f"{what}: {jax.tree_util.keystr(path)} differs by {error}"


def train_both(name: str, trainable: str = "all"):
  """Train cnnjax's `name` and its PyTorch twin side by side, comparing after every step, then starting cnnjax's
  next step from PyTorch's state (each step is checked from the same point: see the module docstring)."""
  torch_model = twin(name).train(trainable != "head")  # a frozen body runs as in evaluation
  config = cnnjax_config(name, trainable)
  run = train.build(config)
  model, head = run.step_config.model, run.step_config.classifier
  variables = in_cnnjax_layout(model, name, torch_model)
  state = train.TrainState.create(
    apply_fn=model.apply, params=variables["params"], batch_stats=variables["batch_stats"], tx=run.optimizer
  )
  devices = jax.local_devices()[:DEVICES]
  p_train, _ = train.pmapped_steps(run.step_config, devices=devices)
  optimizer, schedule = torch_optimizer(torch_model, config, trainable)
  # the input cnnjax's step computes, float32 (XLA's division differs from numpy's in the last bit), for both
  normalize = jax.jit(functools.partial(data.normalize, mean=run.step_config.mean, std=run.step_config.std))
  rng = np.random.default_rng(0)
  for step in range(STEPS):
    images = rng.integers(0, 256, (BATCH, config.image_size, config.image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    batch = {"image": images.reshape(DEVICES, -1, *images.shape[1:]), "label": labels.reshape(DEVICES, -1)}
    state, _ = p_train(replicate(state, device_mesh(devices)), batch)
    normalized = torch.from_numpy(np.asarray(normalize(images), np.float64))
    torch_step(torch_model, optimizer, schedule, normalized.permute(0, 3, 1, 2), torch.from_numpy(labels).long())
    theirs = in_cnnjax_layout(model, name, torch_model)
    assert_agree({"params": state.params, "batch_stats": state.batch_stats}, theirs, f"{name} after step {step}")
    buffers = {k: optimizer.state[p]["momentum_buffer"] for k, p in torch_model.named_parameters() if p.requires_grad}
    momentum = in_cnnjax_layout(model, name, torch_model, replace=buffers)["params"]
    trace = optax.tree_utils.tree_get(state.opt_state, "trace")
    if head:  # PyTorch keeps no momentum for the frozen body
      momentum = {**trace, head: momentum[head]}
    assert_agree(trace, momentum, f"{name}'s momentum after step {step}")
    opt_state = optax.tree_utils.tree_set(state.opt_state, trace=momentum)
    state = state.replace(params=theirs["params"], batch_stats=theirs["batch_stats"], opt_state=opt_state)


@pytest.mark.parametrize(
  "name", ["alexnet_torchvision", "vgg11_bn", "googlenet_torchvision", "resnet18", "resnet50", "resnet20"]
)
def test_a_step_is_pytorchs_step(name):
  with jax.enable_x64(True):
    train_both(name)


@pytest.mark.parametrize("name", ["resnet18", "alexnet_torchvision"])
def test_a_step_of_the_head_alone_is_pytorchs_with_the_body_frozen(name):
  """trainable='head' against requires_grad=False for all but the classifier and the whole model in eval mode
  (BatchNorm on its running statistics, left as they are)."""
  with jax.enable_x64(True):
    train_both(name, trainable="head")


def _sgd_with_lr_inside_momentum(config, learning_rate_fn, classifier=None):
  # v = m v + lr (g + wd w); w -= v: Caffe's and cuda-convnet's form, which differs where the rate changes
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.scale_by_learning_rate(learning_rate_fn),
    optax.trace(config.momentum),
  )


def _sgd_with_decay_outside_momentum(config, learning_rate_fn, classifier=None):
  return optax.chain(
    optax.trace(config.momentum),
    optax.add_decayed_weights(config.weight_decay),
    optax.scale_by_learning_rate(learning_rate_fn),
  )


SCHEDULE = optim.schedule  # the real one, which the planted schedule below wraps


def _schedule_decaying_a_step_late(config, steps_per_epoch):
  late = config.copy_and_resolve_references()
  late.lr_decay_steps = tuple(b + 1 for b in config.lr_decay_steps)
  return SCHEDULE(late, steps_per_epoch)


# each mistake, and where the comparison first sees it
PLANTED = {
  "the learning rate inside the momentum": (
    (optim, "sgd", _sgd_with_lr_inside_momentum),
    r"momentum after step 0: \['conv1'\]",
  ),
  "weight decay outside the momentum": (
    (optim, "sgd", _sgd_with_decay_outside_momentum),
    r"momentum after step 0: \['conv1'\]",
  ),
  "BatchNorm momentum 0.1 in flax's sense": (
    (layers, "BATCH_NORM", functools.partial(layers.BatchNorm, momentum=0.1)),
    r"after step 0: \['batch_stats'\]\['conv1'\]\['norm'\]\['mean'\]",
  ),
  "BatchNorm's biased running variance (flax's)": (
    (layers, "BATCH_NORM", functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)),
    r"after step 0: \['batch_stats'\]\['conv1'\]\['norm'\]\['var'\]",
  ),
  "the decay boundary a step late": (
    (optim, "schedule", _schedule_decaying_a_step_late),
    r"after step 3: \['params'\]",
  ),
}


@pytest.mark.parametrize("mistake", list(PLANTED))
def test_a_planted_mistake_fails_the_comparison(mistake, monkeypatch):
  (module, attribute, planted), where = PLANTED[mistake]
  monkeypatch.setattr(module, attribute, planted)
  with jax.enable_x64(True), pytest.raises(AssertionError, match=where):
    train_both("resnet8")
