"""What every tool shares: a --help that lists the flags a user needs and exits 0, choices from the code, and
README's flag table checked against the code and the demo's flagfile."""

import concurrent.futures
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from keras_dc import cli, config as config_lib
from keras_dc.config import Config

TOOLS = sorted(name for name in os.listdir(os.path.join(ROOT, "tools")) if name.endswith(".py"))
# Runs a tool's entry point with --help in this process, then names the flags its module and keras_dc declared.
HELP_AND_FLAGS = """
import importlib.util, json, sys
from absl import flags
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("tool_under_test", path)
module = sys.modules["tool_under_test"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.argv = [path, "--help"]
try:
    module.entry_point()
except SystemExit as stop:
    status = stop.code
declared = [flag.name for name, defined in flags.FLAGS.flags_by_module_dict().items()
            if name == "tool_under_test" or name.startswith("keras_dc.") for flag in defined]
print("DECLARED " + json.dumps({"status": status, "flags": declared}))
"""


def _help_and_flags(tool):
    completed = subprocess.run([sys.executable, "-c", HELP_AND_FLAGS, os.path.join(ROOT, "tools", tool)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    text, _, declared = completed.stdout.rpartition("DECLARED ")
    return text, json.loads(declared)


def test_every_tools_help_lists_each_flag_it_declares_and_exits_0():
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = dict(zip(TOOLS, pool.map(_help_and_flags, TOOLS)))
    for tool, (text, declared) in results.items():
        assert declared["status"] == 0, tool
        assert declared["flags"], tool
        missing = [name for name in declared["flags"] if not re.search(rf"--(\[no\])?{name}:", text)]
        assert missing == [], f"{tool} --help lacks {missing}"


@pytest.mark.parametrize("tool", ["linear_probe.py", "finetune.py"])
def test_evaluation_tools_help_shows_the_input_flags_and_exits_0(tool):
    completed = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), "--help"], capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    for flag in ("--workdir", "--backbone", "--[no]random_init", "--train_data", "--val_data", "--arch"):
        assert f"{flag}:" in completed.stdout, flag


def test_help_is_asked_for_only_before_the_programs_arguments():
    assert cli.asked_for_help(["--workers=2", "--help"]) and cli.asked_for_help(["-?"])
    assert cli.asked_for_help(["--helpfull"]) and cli.asked_for_help(["-helpshort"])
    assert not cli.asked_for_help(["--workers=2", "--", "--help"])
    assert not cli.asked_for_help(["--helpful_name=1", "help"])


def test_choice_texts_say_every_choice():
    assert config_lib.one_of(("a", "b", "c")) == "a, b or c"
    assert config_lib.one_of(("a",)) == "a"


def _readme_flag_table():
    """{flag: (meaning, demo)} of README's "Flags that matter" table; a row naming several flags gives each
    its own comma-separated demo value."""
    text = open(os.path.join(ROOT, "README.md")).read()
    table = text.split("### Flags that matter", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        names = re.findall(r"`--(\w+)`", cells[0])
        values = [value.strip() for value in cells[2].split(",")] if len(names) > 1 else [cells[2]]
        for name, value in zip(names, values):
            rows[name] = (cells[1], value)
    return rows


def _demo_settings():
    """The Config of flags/demo.flags (every other setting at its default)."""
    values = {}
    for line in open(os.path.join(ROOT, "flags", "demo.flags")):
        match = re.fullmatch(r"--(no)?(\w+)(?:=(.*))?", line.strip())
        if match:
            no, name, value = match.groups()
            values[name] = value if value is not None else not no
    fields = {field.name: type(getattr(Config(), field.name)) for field in dataclasses.fields(Config)}
    return Config(**{name: value if fields[name] is bool else fields[name](value) for name, value in values.items()})


def _readme_value(cell, value):
    """Whether README's `cell` says `value` (yes/no for a switch, off/none/workdir for an unset 0 or '')."""
    if isinstance(value, bool):
        return cell == ("yes" if value else "no")
    if cell in ("off", "none", "workdir"):
        return not value
    if isinstance(value, (int, float)):
        return float(cell.replace(",", "")) == value
    return cell == value


def test_readmes_flag_table_says_the_demos_values_and_the_codes_choices():
    rows, demo = _readme_flag_table(), _demo_settings()
    assert len(rows) > 20
    wrong = {name: (cell, getattr(demo, name)) for name, (_, cell) in rows.items()
             if not _readme_value(cell, getattr(demo, name))}
    assert wrong == {}
    for name, choices in {"arch": config_lib.ARCHITECTURES, "sampling": config_lib.SAMPLING_MODES,
                          "strategy": config_lib.STRATEGIES, "precision": config_lib.PRECISIONS}.items():
        said = re.findall(r"\b[a-z_0-9]+\b", rows[name][0])
        assert [word for word in said if word in choices] == list(choices), name
