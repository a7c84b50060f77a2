"""`python -m cnnjax.zoo`: the table, the breakdowns, the formats, the exit on a bad name."""

import json
import subprocess
import sys

from cnnjax import zoo


def test_json_gives_each_model_with_its_figures():
  # every model's figures: tests/test_model_sizes.py; here the format, on the lecture's networks
  names = ["alexnet", "vgg19", "googlenet", "resnet34"]
  rows = json.loads(zoo.report(names, False, "json"))
  assert [r["name"] for r in rows] == names
  by_name = {r["name"]: r for r in rows}
  assert by_name["vgg19"]["macs"] == 19_632_062_464 and by_name["resnet34"]["params"] == 21_797_672
  assert by_name["googlenet"]["depth"] == 22 and by_name["alexnet"]["input_shape"] == [227, 227, 3]
  assert all({"name", "params", "macs", "input_shape", "paper_params", "paper_macs", "year"} <= set(r) for r in rows)


def test_breakdown_stages_add_up_and_show_where_vgg_spends():
  stages = zoo.breakdown("vgg19")
  assert sum(s["params"] for s in stages) == 143_667_240
  assert sum(s["macs"] for s in stages) == 19_632_062_464
  by_stage = {s["stage"]: s for s in stages}
  assert by_stage["fc6"]["params_share"] > 0.7  # most parameters sit in fc6 ...
  assert by_stage["fc6"]["macs_share"] < 0.01  # ... and almost no computation


def test_inception_savings_per_module():
  rows = zoo.inception_savings()
  assert [r["module"] for r in rows] == ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
  assert rows[0]["input"] == "28x28x192" and rows[0]["reduced_macs"] == 128_049_152  # Table 1: 128M
  assert rows[-1]["input"] == "7x7x832"
  assert all(r["naive_macs"] > 2 * r["reduced_macs"] for r in rows)


def test_cli_formats_and_comparison():
  table = zoo.report(["vgg19", "plain34"], True, "table")
  assert "vgg19: 19.632G multiply-adds = 5.39x plain34" in table
  markdown = zoo.report(["lenet5"], False, "markdown")
  assert markdown.splitlines()[0].startswith("| name | year |") and "60,000" in markdown
  csv = zoo.report(["lenet5"], False, "csv").splitlines()
  assert csv[0].startswith("name,year") and csv[1].startswith("lenet5,1998,") and "32x32x1" in csv[1]


def test_unknown_model_exits_non_zero_with_the_list():
  result = subprocess.run([sys.executable, "-m", "cnnjax.zoo", "--model=lenet6"], capture_output=True, text=True)
  assert result.returncode != 0
  assert "unknown model 'lenet6'" in result.stderr and "lenet5" in result.stderr
  assert "Traceback" not in result.stderr
