"""The README stays true: its runtime section is the tested doc, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from recsys_export.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(name: str) -> str:
    m = re.search(
        rf"<!-- BEGIN {re.escape(name)} [^>]*-->\n(.*?)\n<!-- END {re.escape(name)} -->",
        README,
        re.S,
    )
    assert m, f"README has no block for {name}"
    return m.group(1)


def test_runtime_section_is_the_tested_doc():
    """docs/runtimes.md is what tests/test_embedding.py executes; the README embeds it."""
    doc = (ROOT / "docs" / "runtimes.md").read_text().rstrip("\n")
    assert _section("docs/runtimes.md") == doc, "copy docs/runtimes.md into the README block"


def test_scaling_section_is_the_doc():
    doc = (ROOT / "docs" / "scaling.md").read_text().rstrip("\n")
    assert _section("docs/scaling.md") == doc, "copy docs/scaling.md into the README block"


def test_readme_commands_exist():
    for command in re.findall(r"recsys-export ([a-z]\w*)", README):
        assert command in COMMANDS, command


def test_readme_two_commands_match_makefile_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
