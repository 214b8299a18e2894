"""The bench figures of the README and docs/ and tests/readme_figures.py agree, and every row named exists."""

# ruff: noqa: RUF001  (the README's own dashes, minus and multiplication signs, quoted exactly)

import ast
import re
from pathlib import Path

import pytest
from readme_figures import CHECKED, FIGURES, Figure

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BENCH_MODULES = sorted((ROOT / "mpilock" / "bench").glob("*.py"))
BENCH = "\n".join(module.read_text() for module in BENCH_MODULES)
FIGURE = re.compile(r"[−-]?\d[\d,.]*(?:\s?(?:–|to)\s?[−+]?\d[\d,.]*)?\s?(?:µs|ms|%)")
LOOPS = {"native", "python", "both", "none"}

# Most of the README's text, figures included, moved to the pages of docs/: a figure or passage
# looked up in "the README" below is looked up in the README and those pages, joined.
README += "".join("\n\n" + page.read_text() for page in sorted((ROOT / "docs").glob("*.md")))


def bench_phases() -> set[str]:
    """The ``PHASES`` tuple of the mpilock/bench/ package, read from its source (importing it starts MPI)."""
    for module in BENCH_MODULES:
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PHASES" for t in node.targets):
                return set(ast.literal_eval(node.value))
    raise AssertionError("no module of mpilock/bench/ defines PHASES")


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f.text[:40])
def test_every_listed_figure_is_in_the_readme_and_its_bench_row_exists(figure: Figure) -> None:
    assert figure.text in README, f"the README no longer says {figure.text!r}: update tests/readme_figures.py"
    assert figure.phase in bench_phases(), f"mpilock/bench/ has no phase {figure.phase!r}"
    assert figure.loop in LOOPS
    if figure.row is None:
        assert figure.note, "a figure derived from other rows says how"
    else:
        assert figure.row in BENCH, f"mpilock/bench/ prints no row named like {figure.row!r}"


@pytest.mark.parametrize(("start", "end"), CHECKED)
def test_the_checked_passages_quote_no_unlisted_figure(start: str, end: str) -> None:
    assert README.count(start) == 1, f"README passage {start!r} not found once"
    begin = README.index(start)
    passage = README[begin : README.find(end, begin + len(start)) % (len(README) + 1)]
    listed = [(README.index(f.text), README.index(f.text) + len(f.text)) for f in FIGURES if f.text in README]
    for match in FIGURE.finditer(passage):
        at = begin + match.start()
        assert any(lo <= at < hi for lo, hi in listed), (
            f"README figure {match.group()!r} in {start!r} is not listed in tests/readme_figures.py"
        )
