"""Every fenced shell and Python block of README.md and docs/*.md runs as written.

Each page runs in a fresh directory, its blocks in order: ``bash``/``sh`` blocks with
``bash -e -o pipefail`` (``recsys-export`` and ``python`` are this interpreter's), Python
blocks in one namespace per page (compiled from a file, so TorchScript can read the
classes' source). A block that fails fails the test, naming the page and line.

A block is not run only when the line just before its fence says why (an HTML comment,
invisible on the rendered page):

``<!-- doc-test: skip REASON -->``
    not run: it installs packages, needs a GPU, a Ray cluster or minutes of benchmark,
    or runs this suite itself. The reason is required.
``<!-- embedding-test: NAME -->``
    run by ``tests/test_embedding.py``, which builds the C++ example and installs the
    Node one (skipped there where g++/libtorch or npm are missing).

and two markers change how a block runs:

``<!-- doc-test: setup NAME -->``
    before the block, :data:`SETUPS` ``[NAME]`` puts in the directory the files the block
    assumes the reader has (their own ratings file, a state dict, a bundle).
``<!-- doc-test: file NAME -->``
    the block is the content of file ``NAME`` (the reader saves it), written, not run.

Every fence names its language (``text`` for diagrams and printed output), so that no
command hides in an untyped block. The pages that train or export are marked slow;
trained bundles come from the session fixtures of ``conftest.py`` where a page only
needs one to exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"bash": "bash", "sh": "bash", "python": "python"}
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"^<!-- (doc-test|embedding-test): *(\S+)(?: (.*?))? *-->$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    mark: tuple[str, str, str] | None  # (kind, verb or name, rest)

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the line before it."""
    text = page.read_text(encoding="utf-8")
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = _MARK.match(before)
        kind = (mark.group(1), mark.group(2), mark.group(3) or "") if mark else None
        out.append(Block(page, line, m.group(1).strip(), m.group(2), kind))
    return out


# ------------------------------------------------------------------ setups


def _post_mf_state(cwd: Path, request: pytest.FixtureRequest) -> None:
    """The README's `export mf_state.pt --model mf --ids-from ratings.csv`: a ratings
    file and the state dict of the post's MF trained elsewhere, sized to its ids."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    rows = [(u, i, int(rng.integers(1, 6))) for u in range(12) for i in range(9) if (u + i) % 3]
    (cwd / "ratings.csv").write_text(
        "userId,movieId,rating\n" + "".join(f"u{u},m{i},{r}\n" for u, i, r in rows)
    )
    gen = torch.Generator().manual_seed(0)
    state = {
        "user_factors.weight": torch.randn(12, 3, generator=gen),
        "item_factors.weight": torch.randn(9, 3, generator=gen),
    }
    torch.save(state, cwd / "mf_state.pt")


def _mf_bundle(cwd: Path, request: pytest.FixtureRequest) -> None:
    """`artifacts/mf`: a copy of the session's MovieLens MF bundle (conftest.py)."""
    bundles = request.getfixturevalue("ml_bundles")
    shutil.copytree(bundles["mf"], cwd / "artifacts" / "mf")


def _toy_bundles(cwd: Path, request: pytest.FixtureRequest) -> None:
    """`artifacts/toy-mf`, `artifacts/toy-densenet`: the committed bundles, as a reader
    in the repository's root has them."""
    for name in ("toy-mf", "toy-densenet"):
        shutil.copytree(ROOT / "artifacts" / name, cwd / "artifacts" / name)


SETUPS: dict[str, Callable[[Path, pytest.FixtureRequest], None]] = {
    "post-mf-state": _post_mf_state,
    "mf-bundle": _mf_bundle,
    "toy-bundles": _toy_bundles,
}


# ------------------------------------------------------------------ the rules


def test_every_fence_names_its_language():
    untyped = [b.where for page in PAGES for b in page_blocks(page) if not b.lang]
    assert not untyped, f"fences without a language (use `text` for output): {untyped}"


def test_every_block_is_run_or_says_why_not():
    for page in PAGES:
        for b in page_blocks(page):
            if b.mark is None:
                continue
            kind, verb, rest = b.mark
            if kind == "embedding-test":
                assert page.name == "runtimes.md", f"{b.where}: embedding-test outside runtimes"
            elif verb == "skip":
                assert rest.strip(), f"{b.where}: doc-test: skip needs a reason"
            elif verb == "setup":
                assert rest in SETUPS, f"{b.where}: unknown setup {rest!r}"
            else:
                assert verb == "file" and rest, f"{b.where}: unknown marker {b.mark}"
            if b.lang not in RUN and kind != "embedding-test":
                raise AssertionError(f"{b.where}: a {b.lang} block is never run: drop the marker")


def test_installed_extras_exist():
    """The skipped `pip install` lines name extras that pyproject.toml declares."""
    toml = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = toml.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^(\w+) = \[", section, re.M))
    named = set()
    for page in PAGES:
        for b in page_blocks(page):
            for group in re.findall(r"pip install [^\n#]*?\[([\w,]+)\]", b.body):
                named |= set(group.split(","))
    assert named and named <= extras, named - extras


# ------------------------------------------------------------------ running a page


def _bin_dir(tmp: Path) -> Path:
    """`recsys-export` and `python` as this interpreter runs them."""
    bin_dir = tmp / "_bin"
    bin_dir.mkdir(exist_ok=True)
    for name, cmd in (("recsys-export", "-m recsys_export.cli"), ("python", "")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" {cmd} "$@"\n')
        script.chmod(0o755)
    return bin_dir


def run_page(page: Path, cwd: Path, request: pytest.FixtureRequest) -> str:
    """Run a page's blocks in order in ``cwd``; the text they printed."""
    env = dict(os.environ)
    env["PATH"] = f"{_bin_dir(cwd.parent)}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    namespace: dict = {"__name__": f"doc_{page.stem}"}
    printed = []
    for j, b in enumerate(page_blocks(page)):
        verb, rest = (b.mark[1], b.mark[2]) if b.mark else ("", "")
        if b.lang not in RUN or verb == "skip" or (b.mark and b.mark[0] == "embedding-test"):
            continue
        if verb == "setup":
            SETUPS[rest](cwd, request)
        if verb == "file":
            (cwd / rest).write_text(b.body + "\n", encoding="utf-8")
            continue
        if RUN[b.lang] == "python":
            source = cwd / f"_doc_block_{j}.py"
            source.write_text(b.body, encoding="utf-8")
            try:
                exec(compile(b.body, str(source), "exec"), namespace)
            except Exception as exc:
                pytest.fail(f"{b.where}: the Python block raised {type(exc).__name__}: {exc}")
            continue
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", b.body],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        printed.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            pytest.fail(f"{b.where}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return "".join(printed)


def _check_own_model(cwd: Path, out: str) -> None:
    from recsys_export.runtime import Recommender

    assert "converted mf True" in out
    assert "generic TwoTower is not one of the post's classes" in out
    assert "cannot export FlipsSign to onnx (" in out
    names = ("mf", "densenet", "mf-cli", "densenet-cli", "mf-ids", "two-tower", "two-tower-cli")
    for name in names:
        assert Recommender.load(cwd / f"own-{name}").n_items in (4, 40)
    assert not (cwd / "own-flips").exists()
    top = Recommender.load(cwd / "own-two-tower").recommend(["user-3"], k=38)
    assert not {"item-0", "item-7"} & set(top.items[0])


def _check_readme(cwd: Path, out: str) -> None:
    from recsys_export.runtime import Recommender

    rec = Recommender.load(cwd / "artifacts" / "mf")
    assert rec.n_users == 610 and rec.item_names is not None  # the bundled sample, titled
    assert (cwd / "top10.parquet").is_file() and (cwd / "top10.csv").is_file()
    assert Recommender.load(cwd / "artifacts" / "mine").kind == "mf"


def _check_cli(cwd: Path, out: str) -> None:
    assert out.count("exit 2") == 2  # the two refused commands, each one error line
    assert "recsys-export score: error: --user would be ignored" in out
    assert not (cwd / "s.npy").exists()


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "own-model.md": _check_own_model,
    "README.md": _check_readme,
    "cli.md": _check_cli,
}
SLOW = {"README.md", "own-model.md", "cli.md", "scaling.md"}  # train, export or ml_bundles


def _runnable(page: Path) -> bool:
    return any(
        b.lang in RUN and not (b.mark and (b.mark[1] == "skip" or b.mark[0] == "embedding-test"))
        for b in page_blocks(page)
    )


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
        for p in PAGES
        if _runnable(p)
    ],
)
def test_page_runs(page, tmp_path, monkeypatch, capsys, request):
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(cwd))  # `from models import ...` of a saved file
    before = set(sys.modules)
    try:
        out = run_page(page, cwd, request)
    finally:
        for name in set(sys.modules) - before:  # the page's own modules (models.py)
            if str(cwd) in (getattr(sys.modules[name], "__file__", None) or ""):
                del sys.modules[name]
    check = CHECKS.get(page.name)
    if check is not None:
        check(cwd, out + capsys.readouterr().out)


def test_a_failing_block_fails_the_page(tmp_path, request):
    page = tmp_path / "page.md"
    page.write_text("Text.\n\n```bash\necho ok\nfalse\n```\n", encoding="utf-8")
    (tmp_path / "work").mkdir()
    with pytest.raises(pytest.fail.Exception, match=r"page\.md:3: exit 1"):
        run_page(page, tmp_path / "work", request)
    page.write_text("```python\nraise ValueError('no')\n```\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match=r"page\.md:1: .*ValueError: no"):
        run_page(page, tmp_path / "work", request)
