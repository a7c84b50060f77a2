"""The lecture's experiment commands end to end at a tiny size (shallow nets, a few steps)."""

import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import write_images

from cnnjax import models, train
from cnnjax.experiments import auxiliary, cost, degradation, transfer


def test_degradation_uses_the_papers_recipe_on_cifar10_and_a_short_one_offline():
  paper = degradation.run_config(56, residual=False, dataset="cifar10", seed=2)
  assert (paper.model, paper.dataset, paper.batch_size, paper.learning_rate) == ("cifar_plain56", "cifar10", 128, 0.1)
  assert (paper.num_steps, tuple(paper.lr_decay_steps), paper.weight_decay, paper.seed) == (
    64_000,
    (32_000, 48_000),
    1e-4,
    2,
  )
  offline = degradation.run_config(20, residual=True, dataset="digits")
  assert (offline.model, offline.dataset, offline.image_size) == ("cifar_resnet20", "digits", 16)


def test_degradation_trains_every_net_once_and_writes_its_figure_and_table(local_cifar10, tmp_path, capsys):
  # the paper's path (cifar10 through tfds), on the 24-image CIFAR-10 written in tfds's format for the tests
  tiny = {"data_dir": local_cifar10, "num_steps": 3, "log_every_steps": 1, "eval_every_steps": 3, "batch_size": 8}
  rows = degradation.run("cifar10", [8], str(tmp_path), **tiny)
  assert [r["run"] for r in rows] == ["plain8-s0", "resnet8-s0"]
  for r in rows:  # the table's errors are the runs' own last accuracies, in percent
    summary = json.loads((tmp_path / r["run"] / "summary.json").read_text())
    assert r["step"] == 3 and r["test_error"] == pytest.approx(100 * (1 - summary["eval_accuracy"]))
  assert json.loads((tmp_path / "degradation.json").read_text()) == rows
  assert (tmp_path / "degradation.csv").read_text().splitlines()[
    0
  ] == "run,net,depth,residual,seed,step,train_error,test_error"
  assert (tmp_path / "degradation.png").read_bytes()[:4] == b"\x89PNG"
  capsys.readouterr()
  assert degradation.run("cifar10", [8], str(tmp_path), **tiny) == rows  # rerun: nothing retrained
  assert capsys.readouterr().out.count("finished already") == 2


def test_cost_reproduces_the_papers_figures_and_writes_its_figures(tmp_path):
  tables = cost.run(str(tmp_path))
  totals = {r["model"]: r["macs"] for r in tables["fig3"]}
  # ResNet paper, Fig. 3 and section 3.3: VGG-19 19.6 billion multiply-adds, the 34-layer plain net 3.6 billion,
  # and identity shortcuts (option A) add nothing to it
  assert round(totals["vgg19"] / 1e9, 1) == 19.6 and round(totals["plain34"] / 1e9, 1) == 3.6
  assert totals["resnet34-A"] == totals["plain34"] < totals["resnet34-B"]
  assert all(sum(s["macs"] for s in r["stages"]) == r["macs"] for r in tables["fig3"])
  inception = {r["module"]: r for r in tables["inception"]}
  assert list(inception) == ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
  # 3a naive on 28x28x192: 1x1x64, 3x3x128, 5x5x32 convs on all 192 channels (the pool branch has no conv)
  assert inception["3a"]["naive_macs"] == 28 * 28 * 192 * (64 + 9 * 128 + 25 * 32)
  ilsvrc = {(r["year"], r["model"]): r for r in tables["ilsvrc"]}
  assert ilsvrc[2012, "alexnet"]["top5_error"] == 15.3 and ilsvrc[2012, "alexnet"]["depth"] == 8
  assert ilsvrc[2014, "googlenet"]["depth"] == 22 and ilsvrc[2015, "resnet152"]["depth"] == 152
  assert json.loads((tmp_path / "cost.json").read_text()) == tables
  for name in ("fig3", "inception", "ilsvrc"):
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
  assert "| vgg19 | 19,632,062,464 | 5.39x |" in cost.markdown(tables)


def test_auxiliary_heads_add_gradient_to_the_lower_layers(tmp_path):
  # the experiment's own path (two trainings, four gradient profiles, the files) on a 16-image folder: GoogLeNet's
  # programs are what cost here, and a test split of 4 images keeps its evaluations short
  write_images(tmp_path / "images", {"train/cat": 5, "train/dog": 5, "test/cat": 2, "test/dog": 2})
  # two steps: the first one's learning rate is 0 (the start of the linear warm-up)
  tiny = {
    "dataset": f"imagefolder:{tmp_path / 'images'}",
    "num_steps": 2,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "batch_size": 8,
  }
  results = {r["run"]: r for r in auxiliary.run(str(tmp_path / "w"), **tiny)}
  assert list(results) == ["with_aux-s0", "without_aux-s0"]
  with_aux, without = results["with_aux-s0"], results["without_aux-s0"]
  stages = [p["stage"] for p in with_aux["gradients_at_init"]]
  assert stages[:3] == ["conv1", "conv2_reduce", "conv2"] and stages[-1] == "fc" and "aux_4a" not in stages
  at_init = {
    p["stage"]: (p["grad_norm"], q["grad_norm"])
    for p, q in zip(with_aux["gradients_at_init"], without["gradients_at_init"])
  }
  # same parameters on the main path, so above the heads (4e on) the gradients agree; below, the heads add theirs
  for stage in ("inception_4e", "inception_5a", "inception_5b", "fc"):
    assert at_init[stage][0] == pytest.approx(at_init[stage][1], rel=1e-4)
  for stage in auxiliary.LOWER_STAGES + ("inception_4a",):
    assert at_init[stage][0] > 1.05 * at_init[stage][1]
  assert all(r["step"] == 2 for r in results.values())
  assert results["with_aux-s0"]["gradients_at_end"] != results["with_aux-s0"]["gradients_at_init"]  # it trained
  assert (tmp_path / "w" / "auxiliary.png").read_bytes()[:4] == b"\x89PNG"
  assert (
    (tmp_path / "w" / "auxiliary.csv")
    .read_text()
    .splitlines()[0]
    .startswith("run,aux_heads,seed,step,train_error,test_error")
  )


def test_the_auxiliary_losses_weigh_0_3_each_and_read_inception_4a_and_4d():
  """Section 5: heads "put on top of the output of the Inception (4a) and (4d) modules", their losses "added to the
  total loss of the network with a discount weight (the losses of the auxiliary classifiers were weighted by 0.3)"."""
  config = auxiliary.run_config(aux_heads=True)
  # two classes, as in the experiment's test above: the same init program, compiled once for both
  model = models.create(config.model, 2, **config.model_options)
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  labels = jnp.array([0, 1, 1, 0])
  variables = train.init_variables(jax.random.key(1), model, train.input_shape(config))
  state = train.TrainState.create(apply_fn=model.apply, params=variables["params"], batch_stats={}, tx=optax.sgd(0.1))
  step_config = train.StepConfig(
    model=model, learning_rate_fn=lambda step: 0.1, mean=(0.0,) * 3, std=(1.0,) * 3, aux_loss_weight=0.3
  )

  @jax.jit
  def objective_and_inputs(params):
    heads_read = {}

    def record(next_fun, args, kwargs, context):
      if context.module.name in ("aux_4a", "aux_4d") and context.method_name == "__call__":
        heads_read[context.module.name] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      objective, (_, logits, _, out) = train.loss_fn(params, state, images, labels, step_config, jax.random.key(3))
    return objective, logits, out, heads_read

  objective, logits, out, heads_read = objective_and_inputs(state.params)

  def cross_entropy(z):  # by hand, in float64
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(4), np.asarray(labels)]))

  expected = cross_entropy(logits) + 0.3 * (cross_entropy(out["aux_4a"]) + cross_entropy(out["aux_4d"]))
  assert float(objective) == pytest.approx(expected, rel=1e-5)
  assert abs(expected - cross_entropy(logits)) > 0.1  # the auxiliary terms are large enough for the check to see them
  np.testing.assert_array_equal(heads_read["aux_4a"], out["inception_4a"])
  np.testing.assert_array_equal(heads_read["aux_4d"], out["inception_4d"])


def test_a_bad_list_flag_is_one_clear_line_and_a_non_zero_exit():
  result = subprocess.run(
    [sys.executable, "-m", "cnnjax.experiments.degradation", "--depths=20,x"],
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode != 0 and "--depths takes comma-separated integers" in result.stderr
  assert "Traceback" not in result.stderr


def test_transfer_pretrains_once_and_trains_each_way_from_its_start(tfds_dir, tmp_path, capsys):
  tiny = {
    "data_dir": tfds_dir,
    "num_epochs": 0,
    "num_steps": 2,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "batch_size": 16,
  }  # (the recipe's 50 does not split over the suite's 8 devices)
  rows = transfer.run(str(tmp_path), seeds=(0,), **tiny)
  assert [r["run"] for r in rows] == ["source", "finetune-s0", "probe-s0", "scratch-s0"]
  out = capsys.readouterr().out
  # the pretrained head knew digits 0-4: digits 5-9 get a head of their own (as many classes, other ones)
  assert out.count(f"note: started from {tmp_path / 'source'}; new output for 5 classes of digits") == 2
  source, probe = (json.loads((tmp_path / r / "config.json").read_text()) for r in ("source", "probe-s0"))
  assert (source["classes"], source["shots"], probe["classes"], probe["shots"]) == (
    [0, 1, 2, 3, 4],
    0,
    [5, 6, 7, 8, 9],
    10,
  )
  assert probe["trainable"] == "head" and probe["init_from"] == str(tmp_path / "source")
  assert (tmp_path / "transfer.csv").read_text().splitlines()[
    0
  ] == "run,way,seed,step,train_error,test_error,test_error_at_10"
  assert "| from scratch | 1 |" in transfer.summary_table(rows)
  assert (tmp_path / "transfer.png").read_bytes()[:4] == b"\x89PNG"


def test_every_series_of_the_figures_shows_even_with_a_single_point(tmp_path, drawn):
  """degradation.png after `--epochs=1`: one evaluation per run, once drawn as a dashed line of one point, which
  shows nothing. Every line of the experiments' and the run's figures has a marker or at least two points."""
  from cnnjax import metrics

  rows = []
  for residual in (False, True):
    net = f"{'resnet' if residual else 'plain'}20"
    (tmp_path / net).mkdir()
    lines = [{"step": 10, "train_accuracy": 0.5, "train_loss": 1.0}, {"step": 10, "eval_accuracy": 0.6, "eval_loss": 1}]
    (tmp_path / net / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows.append({"run": net, "net": net, "residual": residual})
  degradation.plot(tmp_path, rows, "digits")
  metrics.plot_curves(tmp_path / "plain20" / "metrics.jsonl", tmp_path / "curves.png")
  lines = [line for axes in drawn for ax in np.ravel(axes) for line in ax.get_lines()]
  assert len(lines) == 4 + 4  # train and test of two runs; loss and error of train and test
  assert all(len(line.get_xdata()) > 1 or line.get_marker() not in (None, "", "None", " ") for line in lines)
