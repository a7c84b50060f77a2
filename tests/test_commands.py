"""The README's and WORKSPACE's smaller commands, run as a user runs them (the training, sweep and experiment
commands have tests of their own): each ends with the output its documentation promises."""

import json
import os
import re
import shutil
import subprocess
import sys

from helpers import ROOT, TINY


def start(*args, env=None) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
  )


def finish(process: subprocess.Popen) -> str:
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0 and "Traceback" not in err, err[-2000:]
  return out


def test_gradflow_throughput_bench_and_a_pending_sweep_as_commands(tfds_dir, tmp_path):
  env = {**os.environ, "TFDS_DATA_DIR": tfds_dir}
  sweep_file = tmp_path / "tiny.py"
  sweep_file.write_text(TINY)
  # side by side: each spends most of its time importing
  processes = {
    "gradflow": start(
      "cnnjax.gradflow", "--config=configs/lenet5.py", f"--workdir={tmp_path / 'gradflow'}", "--steps=0,2", env=env
    ),
    "throughput": start("cnnjax.throughput", "--style=cifar", "--batch=16", "--steps=3"),
    "bench": start("cnnjax.bench", "--config=configs/lenet5.py", "--format=json", "--steps=2", "--window=1", env=env),
    "print": start("cnnjax.sweep", f"--sweep={sweep_file}", f"--workdir={tmp_path / 'sweep'}", "--print_commands"),
    "summary": start("cnnjax.sweep", f"--sweep={sweep_file}", f"--workdir={tmp_path / 'sweep'}", "--summary_only"),
  }
  out = {name: finish(p) for name, p in processes.items()}

  report = json.loads((tmp_path / "gradflow" / "gradflow.json").read_text())
  assert [s["step"] for s in report["steps"]] == [0, 2] and report["model"] == "lenet5"
  assert out["gradflow"].splitlines()[0].startswith("step 0: first layer ")
  assert (tmp_path / "gradflow" / "gradflow.png").read_bytes()[:4] == b"\x89PNG"

  rates = dict(line.split() for line in out["throughput"].splitlines())
  assert rates and all(float(v) > 0 for v in rates.values()), out["throughput"]

  bench = json.loads(out["bench"].strip().splitlines()[-1])
  assert bench["img_per_s"] > 0 and bench["devices"] == 8 and bench["input"] == "fake"

  commands = out["print"].strip().splitlines()  # nothing has run: one `cnnjax.main` line per run, to queue
  assert len(commands) == 2 and all(c.startswith("python -m cnnjax.main --config=configs/lenet5.py ") for c in commands)
  assert {c.split("--config.learning_rate=")[1].split()[0] for c in commands} == {"0.01", "0.05"}
  assert all(f"--workdir={tmp_path / 'sweep'}/lenet5__" in c for c in commands)
  assert f"no summary yet in {tmp_path / 'sweep'}" in out["summary"]


def test_throughput_on_jpeg_files_prints_its_figures_alone():
  """Its JPEG files live in a temporary folder: every reader of them has stopped before the folder goes, so no
  warning about a vanished file follows the figures."""
  done = subprocess.run(
    [sys.executable, "-m", "cnnjax.throughput", "--style=imagenet", "--augment=all", "--batch=8", "--steps=2"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  lines = (done.stdout + done.stderr).splitlines()
  # one row per recipe photos take, in a markdown table
  assert lines[0] == "| recipe | pipeline_img_per_s | pipeline_img_per_cpu_s |" and len(lines) == 7, lines
  assert [line.split("|")[1].strip() for line in lines[2:]] == [
    "`alexnet`",
    "`vgg`",
    "`resnet`",
    "`inception`",
    "`none`",
  ]


def test_docs_remakes_a_pages_figures_and_tables_between_its_markers(tmp_path):
  """`python -m cnnjax.docs --only=cost` on a copy of the pages: the figures are rewritten, the block between the
  section's markers holds the tables the command printed and names the command and commit, the rest of the page
  is untouched; a page without the markers is refused in one line before anything runs."""
  docs = tmp_path / "docs"
  shutil.copytree(ROOT / "docs", docs)
  page = (docs / "experiments.md").read_text()
  head, rest = page.split("<!-- docs: cost -->\n")
  (docs / "cost-fig3.png").unlink()
  command = [sys.executable, "-m", "cnnjax.docs", "--only=cost", f"--out={docs}", f"--runs={tmp_path / 'runs'}"]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert (docs / "cost-fig3.png").read_bytes()[:4] == b"\x89PNG"
  new_head, new_rest = (docs / "experiments.md").read_text().split("<!-- docs: cost -->\n")
  block, tail = new_rest.split("\n<!-- /docs: cost -->")
  assert new_head == head and tail == rest.split("\n<!-- /docs: cost -->")[1]
  printed = (tmp_path / "runs" / "cost" / "cost.json").read_text()
  assert "| vgg19 | 19,632,062,464 | 5.39x |" in block and "19632062464" in printed  # the paper's 19.6 G, as printed
  assert "Made by `python -m cnnjax.docs --only=cost` at commit " in block
  assert "`python -m cnnjax.experiments.cost --workdir=RUNS`" in block

  (docs / "experiments.md").write_text(head)  # the markers gone
  command[-1] = f"--runs={tmp_path / 'second'}"
  refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert refused.returncode == 1 and "has no block `<!-- docs: cost -->`" in refused.stderr
  assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "second").exists()  # nothing ran


def listed_flags(text: str) -> set[str]:
  return set(re.findall(r"^\s+--(?:\[no\])?(\w+)", text, flags=re.M))


def test_every_commands_help_lists_the_flags_it_takes():
  """`--help` once listed none of the experiments' flags (--seeds, --workdir: defined by shared helpers, which
  absl shows only under --helpfull). Every flag a cnnjax module defines for the command is in its --help now."""
  commands = ["cnnjax.main", "cnnjax.sweep"] + [
    f"cnnjax.experiments.{e}" for e in ("degradation", "auxiliary", "transfer")
  ]
  helps = {(c, h): start(c, h) for c in commands for h in ("--help", "--helpfull")}
  out = {key: process.communicate(timeout=300)[0] for key, process in helps.items()}  # (absl's --helpfull exits 1)
  for command in commands:
    full = out[command, "--helpfull"]
    # --helpfull lists flags under the module that defines them: those of cnnjax's are the command's own
    ours = set()
    for section in re.split(r"\n(?=\S)", full):
      header = section.splitlines()[0]
      if header.startswith("cnnjax.") or "/cnnjax/" in header:  # a cnnjax module, or the command's own file
        ours |= listed_flags(section)
    assert ours and ours <= listed_flags(out[command, "--help"]), (command, ours - listed_flags(out[command, "--help"]))
  assert {"seeds", "workdir", "data_dir"} <= listed_flags(out["cnnjax.experiments.auxiliary", "--help"])
  assert {"depths", "seeds"} <= listed_flags(out["cnnjax.experiments.degradation", "--help"])
