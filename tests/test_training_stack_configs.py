"""Every hyperparameter of the training stack's configs says what it does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "mlip_distill" / "configs"
FILES = [CONFIGS / "train.yaml", *sorted(CONFIGS.glob("trainer/*.yaml")), *sorted(CONFIGS.glob("scheduler/*.yaml")),
         *sorted(CONFIGS.glob("optimizer/*.yaml")), *sorted(CONFIGS.glob("logger/*.yaml"))]
KEY = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_setting_has_a_comment(path):
    lines = path.read_text().splitlines()
    in_defaults = False
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        key, value = match.groups()
        if key == "defaults":
            in_defaults = True
            continue
        if in_defaults and line.startswith(" "):
            continue
        in_defaults = False
        if not value or value.startswith("#"):
            continue  # a section: its keys carry the comments
        commented = "#" in value or (number > 0 and lines[number - 1].lstrip().startswith("#"))
        assert commented, f"{path.name}:{number + 1}: '{key}' has no comment"
