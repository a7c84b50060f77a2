"""What every experiment does with its runs: train each once, read its final errors, write its table."""
import csv

from absl import flags
from etils import epath

from cnnjax import cli, metrics, train


def train_once(config, run_dir) -> None:
  """Train `config` in `run_dir` unless it finished there already; an unfinished run resumes from its checkpoint."""
  run_dir = epath.Path(run_dir)
  if (run_dir / "summary.json").exists():
    print(f"{run_dir.name}: finished already in {run_dir}", flush=True)
  else:
    train.train_and_evaluate(config, str(run_dir))


def final_errors(run_dir) -> dict:
  """Training error over the last logged interval and the last test error, in percent."""
  lines = metrics.read_metrics(epath.Path(run_dir) / "metrics.jsonl")
  last_train = [l for l in lines if "train_accuracy" in l][-1]
  last_eval = [l for l in lines if "eval_accuracy" in l][-1]
  return {"step": last_eval["step"], "train_error": 100 * (1 - last_train["train_accuracy"]),
          "test_error": 100 * (1 - last_eval["eval_accuracy"])}  # fmt: skip


def write_csv(path, rows: list[dict]) -> None:
  with epath.Path(path).open("w") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def define_flags(workdir: str, seeds: str, each: str):
  """The flags of an experiment trained per seed (--workdir, --seeds, --data_dir); defined only when it runs as a
  command, so that importing several commands together is safe."""
  flags.DEFINE_string("workdir", workdir, "Where the runs, the figure and the tables go.")
  cli.define_integer_list("seeds", seeds, f"Seeds to train each {each} with.")
  flags.DEFINE_string("data_dir", "", "tfds data directory.")


def command(run, summary_table, outputs: str):
  """The `main` of such an experiment: run(workdir, seeds, data_dir), its table, what it wrote."""

  def main(argv):
    del argv
    cli.start()
    given = flags.FLAGS
    results = run(given.workdir, [int(s) for s in given.seeds], given.data_dir)
    print(summary_table(results))
    print(f"\nwrote {given.workdir}/{outputs}")

  return main
