"""The module structure the README's file map promises: no import cycles, even through imports inside
functions, and `import minibert` leaves the extraction machinery unloaded."""

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "minibert"


def module_name(path):
    """minibert/model.py -> "model", minibert/backends/cpu.py -> "backends.cpu", minibert/backends/__init__.py
    -> "backends"."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of_each_module():
    """module -> the minibert modules it imports anywhere in its text (top level or inside functions), relative
    imports resolved from its package: `from ..errors import` in backends/cpu.py is "errors", and
    `from . import threads` or `from .backends import cpu` name a module when there is one by that name."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for dots, target, names in re.findall(r"^\s*from (\.+)([\w.]*) import \(?([\w, ]+)", path.read_text(), re.M):
            base = package[:len(package) - (len(dots) - 1)] + ([target] if target else [])
            module = ".".join(part for part in base if part)
            found |= {f"{module}.{part.strip()}".strip(".") for part in names.split(",")
                      if f"{module}.{part.strip()}".strip(".") in paths}
            if target and module in paths:
                found.add(module)
        graph[name] = {module for module in found if module != name}
    return graph


def test_relative_imports_resolve_in_subpackages():
    graph = imports_of_each_module()
    assert {"backends.threads", "backends.reference_backend"} <= graph["backends.cpu"]
    assert "errors" in graph["backends.cuda"] and "backends" in graph["model"] and "errors" in graph["backends"]


def test_no_module_reaches_itself_through_its_imports():
    graph = imports_of_each_module()
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for module in graph[todo.pop()] - seen:
                seen.add(module)
                todo.append(module)
        assert start not in seen, f"minibert.{start} imports itself through {sorted(seen)}"


def test_import_minibert_loads_no_extraction_machinery():
    code = "import sys, minibert; print(sorted(m for m in sys.modules if m.startswith('minibert.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for module in ("corpus.extract", "corpus.reduce", "corpus.readers", "corpus.search", "analysis.probe",
                   "corpus.ray_data", "train.finetune"):
        assert f"'minibert.{module}'" not in loaded, loaded
