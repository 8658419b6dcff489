"""docs/guarantees.md names, next to each promise, the tests that prove it: every one of them
must exist, so that renaming or deleting a test cannot silently leave a promise unproved."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"`(test_\w+\.py)::(\w+)`")


def test_every_test_named_in_the_guarantees_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text()
    cited = CITED.findall(text)
    assert len(cited) >= 40, "the guarantees name their tests as `test_file.py::test_name`"
    missing = []
    for file, name in sorted(set(cited)):
        path = ROOT / "tests" / file
        source = path.read_text() if path.exists() else ""
        if not re.search(rf"^(async )?def {name}\(", source, re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert missing == [], f"docs/guarantees.md names tests that do not exist: {missing}"
