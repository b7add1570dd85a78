"""The module structure the README's file map promises: no import cycles, even through imports inside
functions; no module importing from a layer above its own; and `import minibert` leaves the extraction
machinery unloaded."""

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

import minibert

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "minibert"
KERNELS = ROOT / "kernels"          # installed as minibert.kernels

# Lowest first. A module may import from its own layer and the layers below, never from one above: the
# stages read bottom-up, and a stage can be understood (and tested) without the ones that use it. The
# package root (minibert/__init__.py) re-exports every layer, so it sits on top; a module that calls
# `minibert.load` imports what that name is (api.load), see imports_of_each_module.
LAYERS = [
    ["errors", "files", "tree", "progress", "conventions", "kernels", "kernels.*"],   # no model knowledge
    ["checkpoint", "checkpoint.*", "tokenizer"],     # a model directory read: config, weights, tokenizer
    ["backends", "backends.*"],                      # the ops, one module per backend
    ["model", "heads"],                              # the encoder, and BERT's own pretraining heads on it
    ["embed", "embed.*"],                            # vectors from texts: pooling, recipe, encode
    ["api", "embed.estimator"],                      # load, Model; the scikit-learn wrapper around them
    ["corpus", "corpus.*", "train", "train.*"],      # using a model: corpora, search, fine-tuning
    ["analysis", "analysis.*", "serve", "serve.*"],  # probes, parity, attention view, walkthrough; the server
    ["", "__main__", "cli", "cli.*"],                # the package's front door and the commands
]
# Upward imports kept on purpose, each with its reason; each must still exist (a stale entry fails).
ALLOWED_UPWARD = {
    ("api", "corpus.search"): "Model.search, deprecated for minibert.search(model, ...) (corpus sits above api)",
}


def module_name(path):
    """minibert/model.py -> "model", minibert/backends/cpu.py -> "backends.cpu", minibert/backends/__init__.py
    -> "backends", minibert/__init__.py -> "" (the root), kernels/cpu.py -> "kernels.cpu"."""
    base, prefix = (KERNELS, ("kernels",)) if KERNELS in path.parents else (PACKAGE, ())
    parts = prefix + path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_paths():
    return {module_name(path): path for path in [*PACKAGE.rglob("*.py"), *KERNELS.glob("*.py")]}


def imports_of_each_module():
    """module -> the minibert modules it imports anywhere in its text (top level or inside functions, under
    any alias), relative imports resolved from its package: `from ..errors import` in backends/cpu.py is
    "errors", and `from . import threads` or `from .backends import cpu` name a module when there is one by
    that name. `import minibert` counts as an import of the modules that define the names it is used for
    (`minibert.load` -> "api"; the root's own functions -> "")."""
    paths = module_paths()
    graph = {}
    for name, path in paths.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [part for part in package if part]
        text = path.read_text(encoding="utf-8")
        found = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == "minibert":
                    base = node.module.split(".")[1:]
                else:
                    continue
                module = ".".join(base)
                for alias in node.names:
                    child = f"{module}.{alias.name}".strip(".")
                    if child in paths:
                        found.add(child)
                    elif module == "":
                        found |= root_owner(alias.name)
                    elif module in paths:
                        found.add(module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "minibert":        # the root: what each used name really is
                        for used in {n.attr for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute)
                                     and isinstance(n.value, ast.Name) and n.value.id == "minibert"}:
                            found |= root_owner(used)
                    elif alias.name.startswith("minibert.") and alias.name[len("minibert."):] in paths:
                        found.add(alias.name[len("minibert."):])
        graph[name] = {module for module in found if module != name}
    return graph


def root_owner(name):
    """The module that defines what the package root offers as `name`: {"api"} for load, {""} for the root's
    own functions; none for its metadata (__version__, a str: Python imports the root before any submodule,
    so reading it couples no layer)."""
    owner = getattr(getattr(minibert, name), "__module__", None)
    if owner is None:
        return set()
    return {owner[len("minibert."):] if owner.startswith("minibert.") else ""}


def layer_of(module):
    """The layer that names the module itself, else the first whose pattern matches it (embed.estimator sits
    with api, above the rest of embed)."""
    for level, patterns in enumerate(LAYERS):
        if module in patterns:
            return level
    for level, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return level
    raise AssertionError(f"minibert.{module} is in no layer of tests/test_structure.py's LAYERS: add it")


def test_relative_imports_resolve_in_subpackages():
    graph = imports_of_each_module()
    assert {"backends.threads", "backends.reference_backend"} <= graph["backends.cpu"]
    assert "errors" in graph["backends.cuda"] and "backends" in graph["model"] and "errors" in graph["backends"]
    assert {"progress", "train.state", "kernels.cpu_backward"} <= graph["train.finetune"] | graph["train.optimizer"]
    assert "api" in graph["corpus.search"]                                  # import minibert; minibert.load
    assert "kernels.reference" in graph["kernels.reference_layers"]


def test_every_module_has_a_layer_and_none_imports_from_a_higher_one():
    graph = imports_of_each_module()
    upward = {(module, target) for module, targets in graph.items() for target in targets
              if layer_of(target) > layer_of(module)}
    found = sorted(f"minibert.{module} (layer {layer_of(module)}) imports minibert.{target} (layer "
                   f"{layer_of(target)})" for module, target in upward - set(ALLOWED_UPWARD))
    assert not found, "\n".join(found)
    assert set(ALLOWED_UPWARD) <= upward, f"no longer needed: {sorted(set(ALLOWED_UPWARD) - upward)}"


def test_no_module_reaches_itself_through_its_imports():
    graph = imports_of_each_module()
    for module, target in ALLOWED_UPWARD:      # the deprecated way round, which the layering already names
        graph[module] = graph[module] - {target}
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


def test_the_public_api_is_annotated():
    """mypy (`make lint`) checks what is annotated: every argument and return of the public API is, so that
    a caller's type checker sees them too (py.typed)."""
    import inspect

    from minibert.api import Model
    from minibert.train.classifier import Classifier
    from minibert.corpus.extract import extract
    from minibert.train.finetune import finetune
    public = [minibert.load, minibert.load_classifier, minibert.load_sparse, minibert.search, finetune,
              extract, minibert.load_embeddings,
              minibert.load_cross_encoder, minibert.quantize_embeddings,
              *(getattr(Model, name) for name in ("tokenize", "forward", "__call__", "iter_layers", "encode",
                                                  "encode_words", "get_sentence_embedding_dimension", "fill_mask",
                                                  "mlm_logits", "nsp_logits", "next_sentence", "encode_sparse",
                                                  "similarity", "similarity_pairwise", "encode_query",
                                                  "encode_document", "start_multi_process_pool")),
              Model.config_sha256.fget, Model.max_seq_length.fget, Model.encoder_dir.fget, Model.heads.fget,
              *(getattr(Classifier, name) for name in ("logits", "predict_proba", "predict", "tag", "save"))]
    for function in public:
        signature = inspect.signature(function)
        missing = [name for name, parameter in signature.parameters.items()
                   if name != "self" and parameter.annotation is inspect.Parameter.empty]
        assert not missing and signature.return_annotation is not inspect.Signature.empty, \
            f"{function.__qualname__}: annotate {missing or 'the return'}"


def test_no_module_is_over_500_lines():
    """A module does one job (issue #23): past 500 lines it has always been several (a parser beside the
    assembly, writers beside the run, the loop beside the optimizer)."""
    paths = list(PACKAGE.rglob("*.py")) + list(KERNELS.rglob("*.py"))
    long = {str(path.relative_to(PACKAGE.parent)): n for path in paths
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"over 500 lines, split by job: {long}"
