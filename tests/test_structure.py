"""The module structure the README's file map promises: no import cycles, even through imports inside
functions, and `import minibert` leaves the extraction machinery unloaded."""

import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "minibert"


def imports_of_each_module():
    """module -> the minibert modules it imports anywhere in its text (top level or inside functions)."""
    sources = {path.stem: path.read_text() for path in PACKAGE.glob("*.py")}
    graph = {}
    for name, source in sources.items():
        found = set(re.findall(r"^\s*from \.(\w+) import", source, re.M))
        for group in re.findall(r"^\s*from \. import ([\w, ]+)", source, re.M):
            found |= {part.strip() for part in group.split(",")}
        graph[name] = {module for module in found if module in sources and module != name}
    return graph


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
    for module in ("extract", "reduce", "readers", "search", "probe", "ray_data", "finetune"):
        assert f"'minibert.{module}'" not in loaded, loaded
