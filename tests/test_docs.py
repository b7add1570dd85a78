"""The Python examples in README.md and docs/*.md run, and print what the page says they print.

An example is a ```python block followed directly by a plain ``` block: the output. Numbers are compared
with a tolerance (the last printed digit of a float32 may differ between CPUs and BLAS kernels, as the
parity section of docs/testing.md explains); everything else must match exactly. Blocks without an output block
(signatures, sketches) are not run. An example that needs an optional package (Ray, matplotlib) is
skipped where that package is missing.
"""

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLE = re.compile(r"```python\n((?:(?!```).)*?)```\n```\n((?:(?!```).)*?)```", re.S)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
OPTIONAL = {"ray": "ray", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}


def examples(page):
    """(line, code, output) of each example of a page, in order."""
    text = page.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in EXAMPLE.finditer(text)]


def same_output(got, want):
    """Equal text, numbers within 1e-5 relative (or 2e-6 absolute)."""
    got_numbers, want_numbers = NUMBER.findall(got), NUMBER.findall(want)
    def shape(text):                                # the text with numbers blanked and spacing ignored
        return re.sub(r"\s+", "", NUMBER.sub("#", text))
    if shape(got) != shape(want) or len(got_numbers) != len(want_numbers):
        return False
    return all(abs(float(g) - float(w)) <= max(2e-6, 1e-5 * abs(float(w)))
               for g, w in zip(got_numbers, want_numbers))


@pytest.mark.parametrize("page", [page for page in PAGES if examples(page)], ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_examples_print_what_the_page_shows(page, tmp_path, monkeypatch):
    """A page's examples run in order in one namespace, as a reader types them, in a scratch folder that
    sees the repository's tests/ and docs/ (for the fixtures and example files the pages name)."""
    for name in ("tests", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__example__"}
    for line, code, want in examples(page):
        for module, package in OPTIONAL.items():
            if re.search(rf"^\s*(import|from) {module}\b", code, re.M):
                pytest.importorskip(module, reason=f"{page.name}:{line} needs {package}")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        assert same_output(printed.getvalue(), want), \
            f"{page.name}:{line} shows:\n{want}\nthe code prints:\n{printed.getvalue()}"


def test_examples_are_found():
    assert sum(len(examples(page)) for page in PAGES) >= 3
