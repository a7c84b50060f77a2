"""Fine-tuning: init_from (a cnnjax workdir here; torchvision files go through test_pretrained's loader) and
trainable='head', on tiny CIFAR ResNets (BatchNorm, so frozen statistics are checked too) and fake data."""

import jax
import numpy as np
import pytest

from cnnjax import checkpoint, train
from cnnjax import config as config_lib
from cnnjax.models.pretrained import WeightsError, merge


def tiny(dataset: str, **fields):
  config = config_lib.load("cifar_resnet", "20,local")
  config.model_options.widths = (4, 8, 8)
  config.model_options.stage_sizes = (1, 1, 1)
  config.update(
    dataset=dataset, num_steps=3, num_epochs=0, batch_size=16, log_every_steps=1, eval_every_steps=3, **fields
  )
  return config


def saved(workdir, step):
  state = checkpoint.read_state(workdir / "checkpoints" / str(step) / "state")
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


def flat(tree):
  return {
    "/".join(p.key for p in path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def test_a_new_head_on_a_frozen_pretrained_body(tmp_path, capsys):
  pretrain = tmp_path / "pretrain"
  train.train_and_evaluate(tiny("fake:32x32x3:10"), str(pretrain))
  source = flat(saved(pretrain, 3))
  # another task (5 classes), only the head trains: the body must stay exactly the pretrained one
  probe = tmp_path / "probe"
  train.train_and_evaluate(
    tiny("fake:32x32x3:5", init_from=str(pretrain), trainable="head", learning_rate=0.5, checkpoint_every_steps=1),
    str(probe),
  )
  assert f"note: started from {pretrain}; new fc for 5 classes of fake:32x32x3:5" in capsys.readouterr().out
  after = flat(saved(probe, 3))
  body = [k for k in after if not k.startswith("params/fc/")]
  assert body and all(np.array_equal(after[k], source[k]) for k in body)  # weights and BatchNorm statistics
  assert after["params/fc/kernel"].shape == (8, 5)
  assert not np.array_equal(after["params/fc/kernel"], flat(saved(probe, 1))["params/fc/kernel"])  # the head trained
  # the whole network trains from the same start: everything moves, BatchNorm statistics too
  full = tmp_path / "full"
  train.train_and_evaluate(tiny("fake:32x32x3:5", init_from=str(pretrain)), str(full))
  moved = flat(saved(full, 3))
  assert not np.array_equal(moved["params/conv1/conv/kernel"], source["params/conv1/conv/kernel"])
  assert not np.array_equal(moved["batch_stats/conv1/norm/mean"], source["batch_stats/conv1/norm/mean"])


def test_a_resumed_run_keeps_its_own_weights_not_init_froms(tmp_path, capsys):
  pretrain, run = tmp_path / "pretrain", tmp_path / "run"
  train.train_and_evaluate(tiny("fake:32x32x3:10"), str(pretrain))
  config = tiny("fake:32x32x3:10", init_from=str(pretrain))
  train.train_and_evaluate(config, str(run))
  capsys.readouterr()
  config.num_steps = 4  # one more step: a resume, which must not start from the pretrained weights again
  train.train_and_evaluate(config, str(run))
  assert "started from" not in capsys.readouterr().out


def test_merge_takes_every_tensor_but_the_new_heads_and_refuses_another_architecture():
  fresh = {
    "params": {"conv": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}, "fc": {"kernel": np.zeros((8, 5), np.float32)}}
  }
  source = {"params": {"conv": {"kernel": np.ones((3, 3, 3, 8))}, "fc": {"kernel": np.ones((8, 10))}}}
  merged = merge(fresh, source, new_head=("fc",))
  assert np.all(merged["params"]["conv"]["kernel"] == 1) and np.all(merged["params"]["fc"]["kernel"] == 0)
  with pytest.raises(WeightsError, match=r"1 tensor\(s\) differ: fc/kernel \(8, 10\) \(needs \(8, 5\)\)"):
    merge(fresh, source)  # the same task, yet another number of classes: not this model's weights
  wider = {"params": {**source["params"], "conv": {"kernel": np.ones((3, 3, 3, 16))}}}
  with pytest.raises(WeightsError, match=r"conv/kernel \(3, 3, 3, 16\) \(needs \(3, 3, 3, 8\)\)"):
    merge(fresh, wider, new_head=("fc",))
  with pytest.raises(WeightsError, match=r"conv/kernel absent"):
    merge(fresh, {"params": {"fc": source["params"]["fc"]}}, new_head=("fc",))
