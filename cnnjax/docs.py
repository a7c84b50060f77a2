"""python -m cnnjax.docs                                   every figure and table in docs/, remade from the code
python -m cnnjax.docs --only=cost,architectures          some sections (names: --helpfull, or SECTIONS below)
python -m cnnjax.docs --quick --out=/tmp/docs            short trainings, into a copy of the pages

Each section runs the commands a reader of its page would run (the same `python -m cnnjax....` lines), copies
their figures into the docs folder and rewrites the section's block of its page, between `<!-- docs: NAME -->`
and `<!-- /docs: NAME -->`: the tables the commands printed and a line naming the commands, the commit, the
date, the machine and the time it took. So every number in those blocks is one a command printed, and each
figure says which commit made it. Trainings go to RUNS/NAME (default runs/docs-COMMIT: a rerun at the same
commit skips finished runs and resumes unfinished ones; a new commit trains afresh). What needs a GPU
(docs/performance.md's H100 tables: launch/gpu_bench.sh) or downloads is not remade here.
"""

import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from absl import app, flags

from cnnjax import cli

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository: configs/ and docs/ are read from it


@dataclasses.dataclass(frozen=True)
class Section:
  """What one block of a page is made from."""

  name: str
  page: str  # in the docs folder
  commands: tuple[tuple[str, ...], ...]  # `python -m` arguments; {runs} is RUNS/NAME, {docs} the docs folder
  figures: tuple[tuple[str, str], ...] = ()  # (a file the commands write, under {runs}; its name in docs)
  quick: dict = dataclasses.field(default_factory=dict)  # --quick: command index -> arguments added
  table: Callable[[pathlib.Path, list[str]], str] | None = None  # (runs folder, each command's output) -> markdown
  prepare: Callable[[pathlib.Path], None] | None = None  # writes what the commands read into the runs folder


def printed_tables(runs: pathlib.Path, outputs: list[str]) -> str:
  """The markdown tables the commands printed, as they printed them, a blank line between two."""
  del runs
  lines = []
  for line in (line for out in outputs for line in out.splitlines()):
    if line.startswith("|"):
      lines.append(line)
    elif lines and lines[-1]:
      lines.append("")
  return "\n".join(lines).strip()


def printed_text(runs: pathlib.Path, outputs: list[str]) -> str:
  """Everything the commands printed, each under its command, as a code block, but the lines saying what they
  wrote."""
  del runs
  return "\n".join(
    f"    {line}".rstrip() for out in outputs for line in out.splitlines() if not line.startswith("wrote ")
  )


def last_lines(prefix: str):
  """The commands' lines that start with `prefix` (a training's closing line, say), as a list."""

  def table(runs: pathlib.Path, outputs: list[str]) -> str:
    del runs
    return "\n".join(f"    {line}" for out in outputs for line in out.splitlines() if line.startswith(prefix))

  return table


GRADFLOW_NETS = (
  ("plain-20, sigmoid, no BatchNorm", "20,plain,local", "activation=sigmoid,norm=none"),
  ("ResNet-20, sigmoid, no BatchNorm (sigmoid after the addition)", "20,local", "activation=sigmoid,norm=none"),
  (
    "ResNet-20, sigmoid, no BatchNorm, `preactivation=True`",
    "20,local",
    "activation=sigmoid,norm=none,preactivation=True",
  ),
  ("plain-56, ReLU + BatchNorm", "56,plain,local", ""),
  ("ResNet-56, ReLU + BatchNorm", "56,local", ""),
)


def gradflow_command(index: int, arg: str, options: str, steps: str = "0") -> tuple[str, ...]:
  overrides = [f"--config.model_options.{o}" for o in options.split(",") if o]
  return (
    "cnnjax.gradflow",
    f"--config=configs/cifar_resnet.py:{arg}",
    f"--workdir={{runs}}/{index}",
    f"--steps={steps}",
    *overrides,
  )


def gradflow_table(runs: pathlib.Path, outputs: list[str]) -> str:
  """First conv and last hidden conv gradient norms at initialisation, from each run's gradflow.json."""
  del outputs
  lines = ["| network | first conv | last hidden conv |", "|---|---|---|"]
  for index, (label, _, _) in enumerate(GRADFLOW_NETS):
    layers = json.loads((runs / str(index) / "gradflow.json").read_text())["steps"][0]["layers"]
    lines.append(f"| {label} | {layers[0]['grad_norm']:.3g} | {layers[-2]['grad_norm']:.3g} |")
  return "\n".join(lines)


BENCH = (
  (
    "ResNet-20, 128",
    ("cnnjax.bench", "--config=configs/cifar_resnet.py:20", "--steps=20", "--format=json"),
    ("cnnjax.bench_torch", "--model=resnet20", "--batch=128", "--steps=20", "--threads=2"),
  ),
  (
    "ResNet-50 at 224 (v1 both), 16",
    (
      "cnnjax.bench",
      "--config=configs/resnet.py:50",
      "--config.batch_size=16",
      "--steps=5",
      "--window=5",
      "--format=json",
    ),
    ("cnnjax.bench_torch", "--model=resnet50", "--batch=16", "--steps=5", "--window=5", "--threads=2"),
  ),
)


def bench_table(runs: pathlib.Path, outputs: list[str]) -> str:
  """cnnjax against PyTorch, each network's two reports side by side (the commands alternate)."""
  del runs
  lines = [
    "| network, batch | cnnjax img/s | PyTorch img/s | ratio | peak RSS cnnjax / PyTorch |",
    "|---|---|---|---|---|",
  ]
  reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  for (label, _, _), ours, theirs in zip(BENCH, reports[0::2], reports[1::2]):
    ratio = ours["img_per_s"] / theirs["img_per_s"]
    memory = f"{ours['peak_rss_mb']:,.0f} / {theirs['peak_rss_mb']:,.0f} MB"
    lines.append(f"| {label} | {ours['img_per_s']:.1f} | {theirs['img_per_s']:.1f} | {ratio:.2f}x | {memory} |")
  return "\n".join(lines)


def draw(models: str, out: str, *extra: str) -> tuple[str, ...]:
  return ("cnnjax.draw", f"--model={models}", f"--out={{docs}}/{out}", *extra)


SECTIONS = (
  Section("zoo", "zoo.md", (("cnnjax.zoo",),), table=printed_text),
  Section(
    "architectures",
    "architectures.md",
    (
      draw("vgg19,plain34,resnet34", "arch-fig3.png"),
      draw("lenet5,alexnet,googlenet", "arch-early.png"),
      draw("resnet20,plain20", "arch-cifar.png"),
      draw("resnet152,resnet1202", "arch-deep.png"),
      draw("resnet56", "arch-options.png", "--options=shortcut=C", "--fold=yes"),
      draw("googlenet", "arch-inception.png", "--block=inception_3a"),
      draw("resnet34", "arch-basic.png", "--block=conv3_1"),
      draw("resnet50", "arch-bottleneck.png", "--block=conv3_1"),
    ),
  ),
  Section(
    "lenet5",
    "architectures.md",
    (
      ("cnnjax.main", "--config=configs/lenet5.py", "--workdir={runs}/lenet5"),
      ("cnnjax.visualize", "filters", "--workdir={runs}/lenet5", "--out={docs}/lenet5-filters.png"),
      (
        "cnnjax.visualize",
        "activations",
        "--workdir={runs}/lenet5",
        "{runs}/digit.png",
        "--out={docs}/lenet5-activations.png",
      ),
    ),
    quick={0: ("--config.num_epochs=2",)},
    table=last_lines("done:"),
    prepare=lambda folder: write_digit(folder / "digit.png"),
  ),
  Section(
    "gradflow",
    "experiments.md",
    tuple(
      gradflow_command(i, arg, options, "0,100" if i == 3 else "0") for i, (_, arg, options) in enumerate(GRADFLOW_NETS)
    ),
    figures=(("0/gradflow.png", "gradflow-plain20-sigmoid.png"), ("3/gradflow.png", "gradflow-plain56-bn.png")),
    quick={3: ("--steps=0,5",)},
    table=gradflow_table,
  ),
  Section(
    "degradation",
    "experiments.md",
    (
      (
        "cnnjax.experiments.degradation",
        "--dataset=digits",
        "--depths=20,32,44,56",
        "--seeds=0,1,2",
        "--epochs=10",
        "--workdir={runs}",
      ),
    ),
    figures=(("degradation.png", "degradation-digits.png"),),
    quick={0: ("--depths=20,32", "--seeds=0", "--epochs=1")},
    table=printed_tables,
  ),
  Section(
    "cost",
    "experiments.md",
    (("cnnjax.experiments.cost", "--workdir={runs}"),),
    figures=(("fig3.png", "cost-fig3.png"), ("inception.png", "cost-inception.png"), ("ilsvrc.png", "cost-ilsvrc.png")),
    table=printed_tables,
  ),
  Section(
    "auxiliary",
    "experiments.md",
    (("cnnjax.experiments.auxiliary", "--seeds=0,1,2", "--workdir={runs}"),),
    figures=(("auxiliary.png", "auxiliary-digits.png"),),
    quick={0: ("--seeds=0",)},
    table=printed_tables,
  ),
  Section(
    "transfer",
    "experiments.md",
    (("cnnjax.experiments.transfer", "--seeds=0,1,2", "--workdir={runs}"),),
    figures=(("transfer.png", "transfer-digits.png"),),
    quick={0: ("--seeds=0",)},
    table=printed_tables,
  ),
  Section(
    "throughput",
    "performance.md",
    (("cnnjax.throughput", "--style=cifar"), ("cnnjax.throughput", "--style=imagenet")),
    quick=dict.fromkeys(range(2), ("--steps=5",)),
    table=printed_text,
  ),
  Section(
    "recipe-throughput",
    "protocols.md",
    (("cnnjax.throughput", "--style=imagenet", "--augment=all", "--batch=32", "--steps=16"),),
    quick={0: ("--steps=2",)},
    table=printed_tables,
  ),
  Section(
    "protocol-cost",
    "protocols.md",
    (
      (
        "cnnjax.bench",
        "--config=configs/resnet.py:50",
        "--config.batch_size=16",
        "--protocols=center,ten_crop,googlenet144,dense",
      ),
      ("cnnjax.bench", "--config=configs/vgg.py:16", "--config.batch_size=16", "--protocols=center,ten_crop,dense"),
    ),
    quick=dict.fromkeys(range(2), ("--images=1",)),
    table=printed_tables,
  ),
  Section(
    "cpu-bench",
    "performance.md",
    tuple(command for _, ours, theirs in BENCH for command in (ours, theirs)),
    quick=dict.fromkeys(range(4), ("--steps=1", "--window=1")),
    table=bench_table,
  ),
)


def machine() -> str:
  """This machine in a few words: its processor and cores (the figures are made on CPUs)."""
  info = pathlib.Path("/proc/cpuinfo")
  names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")]
  return f"{os.cpu_count()} cores of {names[0] if names else 'an unknown processor'}"


def commit() -> str:
  """The commit the code is at; 'with uncommitted changes' where the code (anything but docs/) differs from it."""
  git = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  head = git("rev-parse", "--short", "HEAD") or "unknown"
  changed = [line for line in git("status", "--porcelain").splitlines() if not line[3:].startswith(("docs/", "runs/"))]
  return f"{head} with uncommitted changes" if changed else head


def shown(command: tuple[str, ...]) -> str:
  return "python -m " + " ".join(command)


def run_section(section: Section, runs: pathlib.Path, docs: pathlib.Path, quick: bool, made_at: str) -> str:
  """Run the section's commands and copy its figures; returns the page block (without its markers)."""
  folder = runs / section.name
  folder.mkdir(parents=True, exist_ok=True)
  if section.prepare:
    section.prepare(folder)
  start, outputs, commands = time.time(), [], []
  for index, template in enumerate(section.commands):
    command = tuple(
      a.format(runs=folder, docs=docs) for a in (*template, *(section.quick.get(index, ()) if quick else ()))
    )
    shown_template = tuple(a.replace("{runs}", "RUNS").replace("{docs}", "docs") for a in template)
    commands.append(shown_template + ((section.quick.get(index, ())) if quick else ()))
    print(f"[{section.name}] {shown(command)}", flush=True)
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
      raise RuntimeError(f"{shown(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    outputs.append(f"$ {shown(commands[-1])}\n{done.stdout}")  # each output under the command that printed it
  for made, name in section.figures:
    shutil.copyfile(folder / made, docs / name)
  minutes = (time.time() - start) / 60
  took = f"{minutes:.0f} min" if minutes >= 2 else f"{minutes * 60:.0f} s"
  made_by = (
    f"<sub>Made by `python -m cnnjax.docs --only={section.name}{' --quick' if quick else ''}` at commit {made_at} on "
    f"{datetime.date.today()}, {machine()}, in {took}; it ran: "
    + "; ".join(f"`{shown(c)}`" for c in commands)
    + ".</sub>"
  )
  table = section.table(folder, outputs).strip("\n") if section.table else ""
  return "\n\n".join(part for part in (table, made_by) if part)


def write_digit(path: pathlib.Path):
  """Test image 7 of the bundled digits (a 5), the picture the LeNet-5 activations are shown for."""
  from PIL import Image

  from cnnjax import data

  Image.fromarray(data.load("digits").test[7]["image"][..., 0]).save(path)


def replace_block(page: pathlib.Path, name: str, block: str | None):
  """Put `block` between the section's markers in `page`; None: only check that the markers are there."""
  text = page.read_text() if page.exists() else ""
  pattern = re.compile(rf"(<!-- docs: {re.escape(name)} -->\n).*?(\n<!-- /docs: {re.escape(name)} -->)", re.S)
  if not pattern.search(text):
    raise ValueError(f"{page} has no block `<!-- docs: {name} -->` ... `<!-- /docs: {name} -->` for this section")
  if block is not None:
    page.write_text(pattern.sub(lambda m: m.group(1) + block + m.group(2), text))


def define_flags():
  """Defined only when run as a command, so that importing several commands together is safe."""
  flags.DEFINE_list("only", [], f"Sections to remake (default: all): {', '.join(s.name for s in SECTIONS)}.")
  flags.DEFINE_bool("quick", False, "Short trainings (for trying the command; the pages then say --quick).")
  flags.DEFINE_string("out", str(ROOT / "docs"), "The docs folder whose pages and figures are rewritten.")
  flags.DEFINE_string("runs", "", "Where the trainings go (default: runs/docs-COMMIT, or runs/docs-quick).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.start()
  names = {s.name for s in SECTIONS}
  if unknown := sorted(set(FLAGS.only) - names):
    raise ValueError(f"unknown section(s) {', '.join(unknown)}; valid: {', '.join(s.name for s in SECTIONS)}")
  docs = pathlib.Path(FLAGS.out).resolve()
  chosen = [s for s in SECTIONS if not FLAGS.only or s.name in FLAGS.only]
  for section in chosen:  # every page has its blocks before anything runs for an hour
    replace_block(docs / section.page, section.name, None)
  made_at = commit()  # the code the commands run (read once: the pages may be edited while they run)
  runs = pathlib.Path(FLAGS.runs or ROOT / "runs" / ("docs-quick" if FLAGS.quick else f"docs-{made_at.split()[0]}"))
  for section in chosen:
    block = run_section(section, runs.resolve(), docs=docs, quick=FLAGS.quick, made_at=made_at)
    replace_block(docs / section.page, section.name, block)
    print(f"[{section.name}] rewrote {docs / section.page}", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main, config_flag="")
