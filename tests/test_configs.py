"""configs/: one file per row of the results, holding only the constants that differ from main.py's.
Each is read (never run) and checked as main.py's constants are, and gives exactly the settings of
the committed run it names, in every setting that changes what a trial computes."""
import json
import re
from pathlib import Path

import pytest

import main
from conftest import REPO
from tool.constants import read_config_file
from tool.errors import UserError
from tool.runs import PLACEMENT_KEYS
from tool.settings import validate

CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_there_is_a_config_for_every_row():
    assert len(CONFIGS) >= 19


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_config_gives_the_settings_of_the_run_it_reproduces(path):
    config = {**main.DEFAULTS, **read_config_file(path, main.DEFAULTS)}
    validate(config)
    run = re.search(r"Reproduces (results/\S+)", path.read_text())
    assert run, f"{path.name} names no run it reproduces"
    saved = json.loads((REPO / run[1] / "config.json").read_text())["config"]
    differ = {k: (config[k], saved.get(k)) for k in config if k not in PLACEMENT_KEYS and config[k] != saved.get(k)}
    assert not differ, differ


def test_a_config_file_is_read_never_run_and_its_mistakes_are_one_clear_error(tmp_path):
    marker = tmp_path / "ran"
    bad = {"code": f"import os\nos.mkdir({str(marker)!r})\n", "expression": "EPOCHS = 10 * 2\n",
           "unknown": "EPOCH = 20\n", "wrong type": "EPOCHS = 'twenty'\n", "not python": "EPOCHS = (\n"}
    for name, text in bad.items():
        path = tmp_path / f"{name.replace(' ', '_')}.py"
        path.write_text(text)
        with pytest.raises(UserError, match=str(path)):
            read_config_file(path, main.DEFAULTS)
    assert not marker.exists()


def test_flags_override_a_config_file(tmp_path):
    from tool.commands import parse

    path = tmp_path / "row.py"
    path.write_text("# a row\nDATASET = 'fmnist'\nEPOCHS = 40\n")
    _, given = parse([str(path), "--epochs", "3"], main.DEFAULTS, "", Path(main.__file__))
    assert given["dataset"] == "fmnist" and given["epochs"] == 3
