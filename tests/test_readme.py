"""The README stays a true front page: short, its links resolve, its commands exist.

The detail lives in docs/. Every shell and Python block of the README and of docs/ is
run by tests/test_doc_snippets.py (the C++ and Node ones of docs/runtimes.md by
tests/test_embedding.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from recsys_export.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_is_a_front_page():
    assert len(README.splitlines()) <= 300


def test_readme_links_every_doc_page():
    for page in DOCS:
        assert f"](docs/{page.name})" in README, f"README does not link docs/{page.name}"


def test_relative_links_resolve():
    for page in PAGES:
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_documented_commands_exist():
    for page in PAGES:
        for command in re.findall(r"recsys-export ([a-z]\w*)", page.read_text(encoding="utf-8")):
            assert command in COMMANDS, f"{page.relative_to(ROOT)}: {command}"


def test_readme_two_commands_match_makefile_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in README and "make test" in README and "make test-fast" in README
    for target in ("demo", "test", "test-fast", "lint"):
        assert re.search(rf"^{target}:", makefile, re.M), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make lint" in ci
