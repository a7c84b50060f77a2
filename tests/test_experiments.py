"""The lecture's experiment commands end to end at a tiny size (shallow nets, a few steps)."""
import json

from cnnjax.experiments import degradation


def test_degradation_trains_every_net_once_and_writes_its_figure_and_table(tfds_dir, tmp_path, capsys):
  tiny = dict(data_dir=tfds_dir, num_steps=3, log_every_steps=1, eval_every_steps=3, batch_size=32)
  rows = degradation.run("digits", [8, 14], str(tmp_path), **tiny)
  assert [r["net"] for r in rows] == ["plain8", "plain14", "resnet8", "resnet14"]
  assert all(r["step"] == 3 and 0 <= r["train_error"] <= 100 and 0 <= r["test_error"] <= 100 for r in rows)
  assert json.loads((tmp_path / "degradation.json").read_text()) == rows
  assert (tmp_path / "degradation.csv").read_text().splitlines()[0] == "net,depth,residual,step,train_error,test_error"
  assert (tmp_path / "degradation.png").read_bytes()[:4] == b"\x89PNG"
  capsys.readouterr()
  assert degradation.run("digits", [8, 14], str(tmp_path), **tiny) == rows  # rerun: nothing retrained
  assert capsys.readouterr().out.count("finished already") == 4
