"""What every experiment does with its runs: train each once, read its final errors, write its table."""

from absl import flags
from etils import epath

from cnnjax import cli, train


def train_once(config, run_dir) -> None:
  """Train `config` in `run_dir` unless it finished there already; an unfinished run resumes from its checkpoint."""
  run_dir = epath.Path(run_dir)
  if (run_dir / "summary.json").exists():
    print(f"{run_dir.name}: finished already in {run_dir}", flush=True)
  else:
    train.train_and_evaluate(config, str(run_dir))


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
