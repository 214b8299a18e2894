"""The bench figures of the README and the docs pages and tests/readme_figures.py agree, and every row named exists."""

# ruff: noqa: RUF001  (the README's own dashes, minus and multiplication signs, quoted exactly)

import ast
import re
from pathlib import Path

import pytest
from readme_figures import CHECKED, FIGURES, Figure

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"README.md": (ROOT / "README.md").read_text()} | {
    f"docs/{page.name}": page.read_text() for page in sorted((ROOT / "docs").glob("*.md"))
}
"""The texts that quote bench figures: the README and the documentation's pages, by path."""
BENCH = (ROOT / "mpilock" / "bench.py").read_text()
FIGURE = re.compile(r"[−-]?\d[\d,.]*(?:\s?(?:–|to)\s?[−+]?\d[\d,.]*)?\s?(?:µs|ms|%)")
LOOPS = {"native", "python", "both", "none"}


def bench_phases() -> set[str]:
    """The ``PHASES`` tuple of mpilock/bench.py, read from its source (importing it starts MPI)."""
    for node in ast.parse(BENCH).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PHASES" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("mpilock/bench.py defines no PHASES")


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f.text[:40])
def test_every_listed_figure_is_in_the_readme_and_its_bench_row_exists(figure: Figure) -> None:
    assert any(figure.text in page for page in PAGES.values()), (
        f"neither the README nor a docs page says {figure.text!r} any more: update tests/readme_figures.py"
    )
    assert figure.phase in bench_phases(), f"mpilock/bench.py has no phase {figure.phase!r}"
    assert figure.loop in LOOPS
    if figure.row is None:
        assert figure.note, "a figure derived from other rows says how"
    else:
        assert figure.row in BENCH, f"mpilock/bench.py prints no row named like {figure.row!r}"


@pytest.mark.parametrize(("start", "end"), CHECKED)
def test_the_checked_passages_quote_no_unlisted_figure(start: str, end: str) -> None:
    holders = [name for name, page in PAGES.items() if start in page]
    assert len(holders) == 1 and PAGES[holders[0]].count(start) == 1, (
        f"passage {start!r} not found once in the README and the docs pages (found in {holders})"
    )
    name, text = holders[0], PAGES[holders[0]]
    begin = text.index(start)
    passage = text[begin : text.find(end, begin + len(start)) % (len(text) + 1)]
    listed = [(text.index(f.text), text.index(f.text) + len(f.text)) for f in FIGURES if f.text in text]
    for match in FIGURE.finditer(passage):
        at = begin + match.start()
        assert any(lo <= at < hi for lo, hi in listed), (
            f"{name}: figure {match.group()!r} in {start!r} is not listed in tests/readme_figures.py"
        )
