"""The peers compare.py times minibert against, each loaded the way its users get it, and the machine record.

Every loader returns None and a reason where its package is missing, so the table can say what was not run
instead of leaving a row out silently. Import this module after the thread-count variables are set
(compare.py sets them before NumPy is imported).
"""

import datetime
import hashlib
import os
import platform
import tempfile

import numpy as np

# CPU flags that change which kernels the libraries pick (OpenBLAS, oneDNN/MKL in torch, MLAS in ONNX Runtime).
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
ONNX_OPSET = 17


def machine_record(threads):
    """What the numbers depend on: CPU model and flags, numpy's BLAS and its kernel, library versions, date."""
    flags, model = set(), platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    record = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "cpu": model, "cpus": os.cpu_count(), "threads": threads,
              "flags": [flag for flag in FLAGS if flag in flags], "numpy": np.__version__,
              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        import threadpoolctl
        record["blas"] = [{key: info.get(key) for key in ("internal_api", "version", "architecture", "num_threads",
                                                          "filepath")}
                          for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]
    except ImportError:
        record["blas"] = "threadpoolctl not installed"
    for name in ("numba", "torch", "transformers", "sentence_transformers", "onnxruntime"):
        try:
            module = __import__(name)
            record[name] = module.__version__
        except ImportError:
            record[name] = None
    if record["torch"]:
        import torch
        record["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return record


def describe(record):
    blas = record["blas"]
    blas_text = blas if isinstance(blas, str) else "; ".join(
        f"{b['internal_api']} {b['version']} {b['architecture']} kernel ({os.path.basename(b['filepath'] or '')})"
        for b in blas)
    versions = ", ".join(f"{name} {record[name]}" for name in ("numpy", "numba", "torch", "transformers",
                                                                 "sentence_transformers", "onnxruntime")
                         if record.get(name))
    return (f"{record['date']}; {record['cpu']}, {record['cpus']} CPUs, flags {' '.join(record['flags']) or 'none'}; "
            f"{record['threads']} threads\nnumpy's BLAS: {blas_text}; torch CPU capability "
            f"{record.get('torch_cpu_capability')}\n{versions}")


def transformers_model(source, threads, attn_implementation=None):
    """AutoModel.from_pretrained as users call it (attn_implementation=None: transformers picks, today SDPA)."""
    try:
        import torch
        import transformers
    except ImportError:
        return None, "transformers not installed"
    torch.set_num_threads(threads)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = transformers.AutoModel.from_pretrained(source, **kwargs).eval()
    return model, model.config._attn_implementation


def torch_forward(model):
    import torch

    def run(ids, mask, types):
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         token_type_ids=torch.from_numpy(types), output_hidden_states=True).hidden_states
    return run


def onnx_path(source):
    """Where the export of `source` is kept: the temp dir, keyed by the checkpoint's bytes and torch's version."""
    import torch
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = os.path.join(source, name)
        if os.path.exists(path):
            digest.update(f"{name}:{os.path.getsize(path)}:{os.path.getmtime(path)}".encode())
    digest.update(f"torch {torch.__version__} opset {ONNX_OPSET}".encode())
    return os.path.join(tempfile.gettempdir(), "minibert-bench-onnx", f"{digest.hexdigest()[:16]}.onnx")


def export_onnx(source, path):
    """torch.onnx.export of the model returning every hidden state; batch and sequence axes dynamic."""
    import torch
    import transformers
    # Eager attention for the export: ONNX Runtime fuses the graph itself, and the exported graph is the
    # same whichever torch attention would have run (SDPA is exported as the same matmul/softmax ops).
    model = transformers.AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    layers = model.config.num_hidden_layers

    class AllHiddenStates(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=True)
            return tuple(out.hidden_states)                   # L + 1 of [B, T, H]

    names = [f"hidden_state_{i}" for i in range(layers + 1)]
    inputs = ("input_ids", "attention_mask", "token_type_ids")
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*inputs, *names)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial"
    with torch.no_grad():
        torch.onnx.export(AllHiddenStates(model), example, partial, input_names=list(inputs), output_names=names,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    os.replace(partial, path)


def export_fastembed_directory(source, directory):
    """The directory fastembed's TextEmbedding(..., specific_model_path=) loads: model.onnx with the last
    hidden state as its one output (as the hub's Qdrant/all-MiniLM-L6-v2-onnx has; fastembed pools output 0)
    beside the checkpoint's tokenizer and config files. Kept in `directory`; made once, with torch."""
    import shutil

    import torch
    import transformers
    if os.path.exists(os.path.join(directory, "model.onnx")):
        return directory
    model = transformers.AutoModel.from_pretrained(source, attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state        # [B, T, H]

    inputs = ("input_ids", "attention_mask", "token_type_ids")
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*inputs, "last_hidden_state")}
    os.makedirs(directory, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if os.path.exists(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), directory)
    # fastembed truncates at the stricter of tokenizer_config's model_max_length and max_length: 512 in this
    # checkpoint's files (and the hub's), where sentence-transformers and minibert cut at the recipe's 256.
    # Given 256 too, fastembed does the same work as the others, never more.
    settings = os.path.join(source, "sentence_bert_config.json")
    if os.path.exists(settings):
        import json
        with open(settings) as f:
            max_length = json.load(f).get("max_seq_length")
        with open(os.path.join(directory, "tokenizer_config.json")) as f:
            tokenizer_config = json.load(f)
        tokenizer_config["max_length"] = max_length
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(tokenizer_config, f, indent=2)
    partial = os.path.join(directory, "model.onnx.partial")
    with torch.no_grad():
        torch.onnx.export(LastHiddenState(model), example, partial, input_names=list(inputs),
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=ONNX_OPSET,
                          dynamo=False)
    os.replace(partial, os.path.join(directory, "model.onnx"))
    return directory


def onnxruntime_session(source, threads):
    """An InferenceSession with default options (graph optimizations: all) and `threads` intra-op threads."""
    try:
        import onnxruntime
    except ImportError:
        return None, "onnxruntime not installed"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch not installed (needed once to export the model)"
    path = onnx_path(source)
    if not os.path.exists(path):
        export_onnx(source, path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session, f"onnxruntime {onnxruntime.__version__}, opset {ONNX_OPSET}, {options.graph_optimization_level}"


def onnxruntime_forward(session):
    def run(ids, mask, types):
        return session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return run


def sentence_transformer(source, threads):
    try:
        import sentence_transformers
        import torch
    except ImportError:
        return None, "sentence-transformers not installed"
    torch.set_num_threads(threads)
    model = sentence_transformers.SentenceTransformer(source, device="cpu")
    return model, f"sentence-transformers {sentence_transformers.__version__}"
