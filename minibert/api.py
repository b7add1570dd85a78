"""`minibert.load` and the Model it returns: tokenize, forward, and both at once."""

import dataclasses
import fnmatch
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from .backends import make_ops
from .checkpoint.config import read_config
from .errors import InputError, warn_caller
from .model import (INTERNALS, capture_name, encoder, encoder_layers, make_position_ids, pack, packed_encoder_layers,
                    unpack)
from .embed.recipe import SPARSE_ENCODER, Recipe, read_recipe, resolve_max_length
from .embed.surface import SentenceTransformersSurface
from .tokenizer import Tokenizer
from .files import sha256_of_file
from .checkpoint.layout import check_model_directory
from .checkpoint.weights import load_weights
from .checkpoint.default_model import (DEFAULT_MODEL_PACKAGES, DEFAULT_MODEL_SHA256, INSTALL_DEFAULT,  # noqa: F401
                                       default_model_dir, verified_default_model_dir)
from .checkpoint.source import HUB_FILES, hub_origin, resolve_source  # noqa: F401

if TYPE_CHECKING:
    from .embed.encode import EncodeResult, WordVectors
    from .embed.sparse import SparseVectors
    from .heads import Heads
    from .model import EncoderOutput, LayerOutput
    from .tokenizer import Batch

# The public API's argument types: a path or hub id; one text or several; a dtype by name or as NumPy's.
PathLike = Union[str, "os.PathLike[str]"]
Texts = Union[str, Sequence[str]]
DTypeLike = Union[str, type, np.dtype]
Layers = Union[int, Sequence[int], str]

DTYPES = {"float32": np.float32, "float64": np.float64}


def load(source: Optional[PathLike] = None, *, backend: str = "cpu", dtype: DTypeLike = "float32",
         revision: Optional[str] = None, token: Optional[str] = None, cache_dir: Optional[PathLike] = None,
         truncate_dim: Optional[int] = None) -> "Model":
    """Load a BERT checkpoint: `source` is a directory, a hub id, or None for the bundled default model.

    revision, token, cache_dir: passed to huggingface_hub for a hub id (a branch, tag or commit; an access
    token for gated or private models; where the hub cache lives).

    backend: "numpy" (plain NumPy reference, float32 or float64), "cpu" (Numba kernels), "cuda".
    truncate_dim: the sentence vector's dimensions encode keeps (model.truncate_dim), as
    SentenceTransformer(..., truncate_dim=); None keeps config_sentence_transformers.json's, if any.
    """
    from .embed.truncate import check_dim
    if truncate_dim is not None:
        check_dim(truncate_dim, "truncate_dim")      # before anything loads
    np_dtype = DTYPES[compute_dtype_name(dtype)]
    ops = make_ops(backend)
    model_dir = resolve_source(source, {"revision": revision, "token": token, "cache_dir": cache_dir})
    recipe = read_recipe(model_dir)                    # sentence-transformers' modules, if any
    model = load_directory(model_dir, recipe, ops, np_dtype, backend)
    if recipe.kind == SPARSE_ENCODER:        # encode_sparse follows the directory's settings, as load_sparse's
        from .embed.sparse import read_splade_settings
        model.splade_settings = read_splade_settings(model_dir)[1]
    if truncate_dim is not None:
        model.truncate_dim = truncate_dim
    return model


def load_sparse(source: Optional[PathLike] = None, *, backend: str = "cpu", dtype: DTypeLike = "float32") -> "Model":
    """A sentence-transformers SparseEncoder directory (Transformer + SpladePooling in modules.json) as a Model
    whose encode_sparse follows its settings; a directory without modules.json loads as `load` (max, relu)."""
    from .embed.sparse import SpladeSettings, read_splade_settings
    np_dtype, ops, model_dir = DTYPES[compute_dtype_name(dtype)], make_ops(backend), resolve_source(source)
    if not (model_dir / "modules.json").is_file():
        model, settings = load_directory(model_dir, read_recipe(model_dir), ops, np_dtype, backend), SpladeSettings()
    else:
        settings = read_splade_settings(model_dir)[1]     # refuses a directory that is not a SparseEncoder
        model = load_directory(model_dir, read_recipe(model_dir), ops, np_dtype, backend)
    model.splade_settings = settings
    return model


def load_directory(model_dir: Path, recipe: Recipe, ops: Any, np_dtype: type, backend: str) -> "Model":
    encoder_dir = model_dir / recipe.transformer_path  # the root, or e.g. 0_Transformer/
    check_model_directory(encoder_dir)      # neither weights nor tokenizer: one error naming both
    config = read_config(encoder_dir / "config.json")
    tokenizer = Tokenizer(encoder_dir, config)
    if tokenizer.dir.resolve() == model_dir.resolve().parent:
        # Found one level up (a Trainer's checkpoint-N/ beside no tokenizer): outside what was asked for.
        warn_caller(f"{model_dir} has no tokenizer files; using those in {tokenizer.dir}, the folder above "
                    "(copy them into the model directory to silence this)")
    weights = ops.prepare(load_weights(encoder_dir, config, np_dtype))
    return Model(config=config, weights=weights, tokenizer=tokenizer, ops=ops, dtype=np_dtype,
                 source=str(model_dir), backend=backend, recipe=recipe, origin=hub_origin(model_dir))


def compute_dtype_name(dtype: Any) -> str:
    """'float32' or 'float64' from a name or NumPy dtype; anything else (float16, bfloat16, "fp32") an InputError."""
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:           # not a dtype at all
        name = None
    if name not in DTYPES:
        raise InputError(f"dtype must be 'float32' or 'float64' (the dtype the model computes in; float16 is "
                         f"only an output cast: encode(..., dtype='float16')), found {dtype!r}")
    return name


@dataclasses.dataclass(frozen=True)
class CaptureRequest:
    """What `capture=` asked for: the internals to compute, by canonical name "layer{i}.{internal}"
    (i = 1..L), and per canonical name the keys to return it under (a deprecated "layer.{i-1}.{internal}"
    spelling gets its own spelling back, so code written for it keeps reading the same arrays)."""
    names: frozenset
    keys: dict

    def keyed(self, captured: dict) -> dict:
        return {key: value for name, value in captured.items() for key in self.keys.get(name, (name,))}


class Model(SentenceTransformersSurface):
    loader = staticmethod(load)             # what a process pool's workers rebuild the model with

    def __init__(self, *, config: Any, weights: dict, tokenizer: Tokenizer, ops: Any, dtype: type, source: str,
                 backend: str, recipe: Recipe = Recipe(), origin: Optional[dict] = None) -> None:
        self.config, self.weights, self.tokenizer, self.ops = config, weights, tokenizer, ops
        self.dtype, self.source, self.backend, self.recipe = dtype, source, backend, recipe
        self.origin = origin        # {"hub_id", "revision" (the commit)} for a hub snapshot, else None
        self.splade_settings: Any = None     # a SparseEncoder's SPLADE settings (load_sparse), else None

    def __getstate__(self):
        """Pickling (joblib, multiprocessing, scikit-learn n_jobs) leaves out the ops: functions built at load."""
        return {key: value for key, value in self.__dict__.items() if key != "ops"}

    def __setstate__(self, state):
        self.__dict__.update({"origin": None, **state})
        self.ops = make_ops(self.backend)       # the same backend, chosen again in this process

    def __repr__(self) -> str:
        c = self.config
        return (f"minibert.Model({self.source!r}, {c.model_type}, {c.num_hidden_layers} layers, "
                f"hidden {c.hidden_size}, backend={self.backend!r}, dtype={np.dtype(self.dtype).name})")

    def tokenize(self, texts: Texts, text_pairs: Optional[Texts] = None, *, max_length: Optional[int] = None,
                 truncation: bool = True) -> "Batch":
        return self.tokenizer(texts, text_pairs, max_length=max_length, truncation=truncation)

    def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None, *,
                output_attentions: bool = False, capture: Union[str, Iterable[str], None] = None,
                num_layers: Optional[int] = None) -> "EncoderOutput":
        """Run the encoder on id arrays [B, T]; returns an EncoderOutput with every hidden state.

        capture: names or patterns of internals to return in `.captured`, e.g. "layer.*.ffn.intermediate"
        (see `minibert.model.INTERNALS`). num_layers: stop after this many layers (default: all).
        """
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask, token_type_ids)
        num_layers = self.check_num_layers(num_layers)
        position_ids = make_position_ids(input_ids, self.config)                        # [B, T]
        request = self.capture_request(capture)
        output = encoder(input_ids, attention_mask, token_type_ids, position_ids, self.weights, self.config,
                         self.ops, dtype=self.dtype, output_attentions=output_attentions, num_layers=num_layers,
                         capture=request.names)
        output = self.ops.to_host(output)
        return dataclasses.replace(output, captured=request.keyed(output.captured))

    def __call__(self, texts: Optional[Texts] = None, text_pairs: Optional[Texts] = None, *,
                 max_length: Optional[int] = None, output_attentions: bool = False,
                 capture: Union[str, Iterable[str], None] = None, input_ids: Any = None, attention_mask: Any = None,
                 token_type_ids: Any = None) -> "EncoderOutput":
        """tokenize + forward; or, as transformers' models are called, model(**model.tokenize(texts))."""
        if input_ids is not None:
            if texts is not None:
                raise InputError("pass texts or input_ids, not both")
            return self.forward(input_ids, attention_mask, token_type_ids, output_attentions=output_attentions,
                                capture=capture)
        if texts is None:
            raise InputError("pass texts (a str or a list of str), or input_ids")
        batch = self.tokenize(texts, text_pairs, max_length=max_length)
        return self.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids,
                            output_attentions=output_attentions, capture=capture)

    def iter_layers(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None, *,
                    num_layers: Optional[int] = None, output_attentions: bool = False,
                    capture: Union[str, Iterable[str], None] = None) -> Iterator["LayerOutput"]:
        """Yield a LayerOutput (index, hidden_state [B, T, H], attention, captured) for the embedding output
        and each layer up to num_layers, computing each only when the previous one has been taken: pool a
        layer and drop it, and the batch's full stack of layers never exists."""
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask, token_type_ids)
        num_layers = self.check_num_layers(num_layers)
        position_ids = make_position_ids(input_ids, self.config)                        # [B, T]
        request = self.capture_request(capture)
        layers = encoder_layers(input_ids, attention_mask, token_type_ids, position_ids, self.weights, self.config,
                                self.ops, dtype=self.dtype, output_attentions=output_attentions,
                                num_layers=num_layers, capture=request.names)
        hosted = (self.ops.to_host(layer) for layer in layers)    # inputs checked now, layers run as taken
        return (dataclasses.replace(layer, captured=request.keyed(layer.captured)) for layer in hosted)

    def iter_packed_layers(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None, *,
                           num_layers: Optional[int] = None) -> Iterator["LayerOutput"]:
        """iter_layers without computing a row for padding: the right-padded rows' real tokens laid end to end
        (model.packed_encoder_layers), each layer handed back as [B, T, H] with zeros at padding. float64 gives
        iter_layers' bits on the real tokens. A backend that cannot pack (cuda) runs iter_layers."""
        if not getattr(self.ops, "packs", True):
            return self.iter_layers(input_ids, attention_mask, token_type_ids, num_layers=num_layers)
        input_ids, attention_mask, token_type_ids = self.check_inputs(input_ids, attention_mask, token_type_ids)
        num_layers = self.check_num_layers(num_layers)
        position_ids = make_position_ids(input_ids, self.config)                        # [B, T]
        keep, offsets = pack(attention_mask)                                            # [B, T], [B + 1]
        layers = packed_encoder_layers(input_ids[keep], offsets, token_type_ids[keep], position_ids[keep],
                                       self.weights, self.config, self.ops, num_layers=num_layers)
        return (dataclasses.replace(layer, hidden_state=unpack(layer.hidden_state, keep)) for layer in layers)

    def encode(self, texts: Texts, *, layers: Layers = -1, combine: Optional[str] = None,
               pooling: Optional[str] = None, normalize: Optional[bool] = None,
               batch_size: Optional[int] = None, max_length: Optional[int] = None, window: Optional[int] = None,
               stride: Optional[int] = None,
               progress: Union[bool, Callable[[int, int], Any], None] = None, dtype: Optional[DTypeLike] = None,
               capture: Union[str, Iterable[str], None] = None, prompt: Optional[str] = None,
               prompt_name: Optional[str] = None, text_pairs: Optional[Texts] = None,
               truncate_dim: Optional[int] = None, precision: Optional[str] = None,
               calibration_embeddings: Any = None, pool: Any = None, chunk_size: Optional[int] = None,
               max_batch_tokens: Optional[int] = None,
               **sentence_transformers_options: Any) -> Union[np.ndarray, List[np.ndarray], "EncodeResult"]:
        """Sentence (or token) vectors from any layers: one str gives one vector [H], a list gives [N, H].

        With no options, the checkpoint's own recipe (`model.recipe`: sentence-transformers' Pooling, Dense,
        Normalize, max_seq_length, prompts) gives the vectors SentenceTransformer(dir).encode gives; each
        option given overrides its setting. A plain transformers checkpoint: mean pooling, not normalised.

        layers: int (negative counts from the top, 0 = embedding output, i = encoder layer i, as
            hidden_states[i]), list of ints, or "all".
        combine: None keeps a layer axis (unless `layers` is a single int), or "mean", "sum", "concat".
        pooling: "cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken" -> array [N, (L,) H];
            "none" -> list of N unpadded
            arrays [n_tokens, (L,) H] over the text's full token sequence, special tokens included.
        window/stride: cover long texts with windows of `window` tokens overlapping by `stride` tokens,
            token vectors averaged where windows overlap. Without window, long texts are truncated (warning).
        capture: as in forward; returns EncodeResult(vectors, captured) with unpadded arrays per text.
        dtype: None returns the dtype the model was loaded with; "float32"/"float64" override it; "float16"
            is a cast of the result (computed in the model's dtype), for storage.
        prompt / prompt_name: text put before each text, or the name of one of the recipe's prompts.
        text_pairs: a second text per text, encoded together as one pair ([CLS] a [SEP] b [SEP]).
        progress: None (a bar on a terminal for large inputs), True, False, or a callable progress(done, total)
            called after each batch with the rows (texts, or windows of them) done so far.
        truncate_dim: keep the first d dimensions of each vector (default: `model.truncate_dim`), cut after the
            recipe's Normalize; normalize=True normalises again after the cut, as sentence-transformers does.
        precision: "float32", "int8", "uint8", "binary" or "ubinary": the vectors quantized as
            sentence-transformers' quantize_embeddings does (minibert.embed.quantize), int8/uint8 steps from
            `calibration_embeddings` [M, D] when given, else from the vectors themselves.
        pool / chunk_size: encode in the worker processes of `model.start_multi_process_pool()`, chunk_size texts
            to a task (minibert.embed.process_pool).
        max_batch_tokens: tokens per forward batch (None: 2048, embed.encode.MAX_BATCH_TOKENS); the texts of a
            batch run end to end with no padding. batch_size: at most this many texts per batch too (None: no
            limit but the tokens). Neither changes the numbers beyond float32 rounding (float64: not at all).
        sentence-transformers' spellings also work: normalize_embeddings, show_progress_bar, convert_to_numpy
            (minibert.conventions lists them, and the keywords refused with what to write instead).
        """
        from .embed.surface import encode_with_options
        return encode_with_options(self, texts, layers=layers, combine=combine, pooling=pooling, normalize=normalize,
                                   batch_size=batch_size, max_length=max_length, window=window, stride=stride,
                                   progress=progress, dtype=dtype, capture=capture, prompt=prompt,
                                   prompt_name=prompt_name, text_pairs=text_pairs, truncate_dim=truncate_dim,
                                   precision=precision, calibration_embeddings=calibration_embeddings, pool=pool,
                                   chunk_size=chunk_size, max_batch_tokens=max_batch_tokens,
                                   sentence_transformers_options=sentence_transformers_options)

    @property
    def encoder_dir(self) -> Path:
        """The folder holding config.json and the encoder's weights: the source, or its 0_Transformer/."""
        return Path(self.source) / self.recipe.transformer_path

    @property
    def config_sha256(self) -> Optional[str]:
        """sha256 of the config.json this model was built from (None without one): the one fingerprint that
        extractions, search indexes and Ray workers compare to know they hold the same model."""
        path = self.encoder_dir / "config.json"
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            return sha256_of_file(f)

    def get_sentence_embedding_dimension(self) -> int:
        """Width of encode()'s sentence vector: the last Dense module's output, else the hidden size; at most
        truncate_dim."""
        width = int(self.recipe.dense[-1].weight.shape[0]) if self.recipe.dense else self.config.hidden_size
        return min(width, self.truncate_dim) if self.truncate_dim else width     # as sentence-transformers

    @property
    def max_seq_length(self) -> int:
        """Tokens encode() keeps per text by default: the recipe's max_seq_length, else the tokenizer's limit."""
        return resolve_max_length(self)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        """`model.max_seq_length = 128`, as sentence-transformers users write it: encode() cuts texts there
        from now on (an explicit max_length= still wins); inspect names the setting's source as set here."""
        from types import MappingProxyType
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 2 <= value <= \
                self.tokenizer.max_length:
            raise InputError(f"max_seq_length must be an int from 2 (the special tokens) to the model's "
                             f"{self.tokenizer.max_length} positions, found {value!r}")
        sources = MappingProxyType({**self.recipe.sources, "max_length": "set on the model (max_seq_length)"})
        self.recipe = dataclasses.replace(self.recipe, max_length=int(value), sources=sources)

    def encode_words(self, texts_or_words: Union[Texts, Sequence[Sequence[str]]], *, layers: Layers = -1,
                     combine: Optional[str] = None, subword: str = "first", normalize: bool = False,
                     batch_size: Optional[int] = None, max_length: Optional[int] = None,
                     window: Optional[int] = None, stride: Optional[int] = None,
                     progress: Union[bool, Callable[[int, int], Any], None] = None, dtype: Optional[DTypeLike] = None,
                     prefix_space: bool = True, max_batch_tokens: Optional[int] = None) -> List["WordVectors"]:
        """Word vectors: list of WordVectors(words, spans, vectors, has_pieces) per text; subword pieces
        pooled by `subword` = "first", "last", "mean" or "first_last". Accepts texts or lists of words; for
        word lists, one entry per given word (zeros and has_pieces False for a word without tokens).
        prefix_space: byte-level BPE tokenizers encode each given word as if a space came before it, as
        transformers' is_split_into_words=True with add_prefix_space=True; False encodes words bare.
        dtype, batch_size and max_batch_tokens as in encode."""
        from .embed.words import encode_words
        return encode_words(self, texts_or_words, layers=layers, combine=combine, subword=subword,
                            normalize=normalize, batch_size=batch_size, max_length=max_length, window=window,
                            stride=stride, progress=progress, dtype=dtype, prefix_space=prefix_space,
                            max_batch_tokens=max_batch_tokens)

    def search(self, index_dir: PathLike, queries: Texts, *, k: int = 10, layer: Optional[int] = None,
               reduced: bool = False, texts_file: Optional[PathLike] = None, field: Optional[str] = None) -> list:
        """Deprecated: use minibert.search(model, index_dir, queries, ...), which gives the same hits. Search
        belongs to the corpus stage, which sits above this module; this method is the one import upward."""
        import warnings
        warnings.warn("Model.search is deprecated: use minibert.search(model, index_dir, queries, ...) "
                      "(minibert.corpus.search.search), which gives the same hits", DeprecationWarning, stacklevel=2)
        from .corpus.search import search
        return search(self, index_dir, queries, k=k, layer=layer, reduced=reduced, texts_file=texts_file,
                      field=field)

    # ---- BERT's own heads (minibert/heads.py), read from the checkpoint on first use -----------------------------

    @property
    def heads(self) -> "Heads":
        """The checkpoint's masked-LM and sentence heads (minibert.heads.Heads)."""
        from .heads import model_heads
        return model_heads(self)

    def fill_mask(self, texts: Texts, top_k: int = 5, targets: Optional[Texts] = None) -> list:
        """What transformers' pipeline("fill-mask") returns: per mask, top_k dicts {score, token, token_str,
        sequence}, best first; nested per text and per mask as the pipeline nests them. targets: restrict the
        candidates to these tokens (a word not in the vocabulary stands for its first piece)."""
        from .heads import fill_mask
        return fill_mask(self, texts, top_k=top_k, targets=targets)

    def mlm_logits(self, texts: Optional[Texts] = None, text_pairs: Optional[Texts] = None, *,
                   max_length: Optional[int] = None, input_ids: Any = None, attention_mask: Any = None,
                   token_type_ids: Any = None) -> np.ndarray:
        """Masked-LM logits [B, T, V] (transformers' prediction_logits) of texts or of id arrays."""
        from .heads import model_mlm_logits
        return model_mlm_logits(self, texts, text_pairs, max_length=max_length, input_ids=input_ids,
                                attention_mask=attention_mask, token_type_ids=token_type_ids)

    def nsp_logits(self, texts: Optional[Texts] = None, text_pairs: Optional[Texts] = None, *,
                   max_length: Optional[int] = None, input_ids: Any = None, attention_mask: Any = None,
                   token_type_ids: Any = None) -> np.ndarray:
        """Sentence-head logits [B, 2] (transformers' seq_relationship_logits; ALBERT's sop_logits)."""
        from .heads import model_nsp_logits
        return model_nsp_logits(self, texts, text_pairs, max_length=max_length, input_ids=input_ids,
                                attention_mask=attention_mask, token_type_ids=token_type_ids)

    def next_sentence(self, first: Texts, second: Texts) -> Union[float, np.ndarray]:
        """Probability that `second` follows `first` (softmax of the next-sentence logits, class 0), as
        BertForNextSentencePrediction; a float for two strs, an array [N] for two lists."""
        from .heads import next_sentence
        return next_sentence(self, first, second)

    def encode_sparse(self, texts: Texts, *, batch_size: int = 32, max_length: Optional[int] = None,
                      max_active_dims: Optional[int] = None, pooling: Optional[str] = None,
                      activation: Optional[str] = None) -> "SparseVectors":
        """SPLADE vectors from the masked-LM head, as sentence-transformers' SparseEncoder.encode: a SparseVectors
        (per text the non-zero vocabulary ids, ascending, and their weights; .decode(top_k), .to_dense()).
        Settings: a SparseEncoder directory's (minibert.load_sparse), else max pooling of log1p(relu(logits))."""
        from .embed.sparse import encode_sparse
        return encode_sparse(self, texts, batch_size=batch_size, max_length=max_length,
                             max_active_dims=max_active_dims, pooling=pooling, activation=activation)

    def capture_names(self, patterns: Union[str, Iterable[str], None]) -> frozenset:
        """Expand names and shell-style patterns into canonical "layer{i}.{internal}" names (i = 1..L, the
        layer whose output is hidden_states[i]); unknown ones are errors."""
        return self.capture_request(patterns).names

    def capture_request(self, patterns: Union[str, Iterable[str], None]) -> CaptureRequest:
        """capture= -> CaptureRequest. A pattern is matched against the canonical names first; one that
        matches none of them but matches the names of minibert <= 0.x ("layer.{i}.{internal}", i from 0)
        is accepted for this release with a DeprecationWarning, and its arrays come back under the old keys.
        The two spellings cannot be confused: "layer.1.query" always means the old, 0-based numbering."""
        if patterns is None:
            return CaptureRequest(frozenset(), {})
        if isinstance(patterns, str):
            patterns = [patterns]
        elif not isinstance(patterns, (list, tuple, set, frozenset)):
            raise InputError(f"capture must be a name or pattern (str) or a list of them, found "
                             f"{type(patterns).__name__} {patterns!r}; e.g. capture='layer1.ffn.intermediate'")
        L = self.config.num_hidden_layers
        canonical = [capture_name(i, name) for i in range(1, L + 1) for name in INTERNALS]
        deprecated = {f"layer.{i - 1}.{name}": capture_name(i, name) for i in range(1, L + 1) for name in INTERNALS}
        keys: Dict[str, set] = {}
        old_patterns: List[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise InputError(f"capture names are strings such as 'layer1.query', found "
                                 f"{type(pattern).__name__} {pattern!r}")
            new = [name for name in canonical if fnmatch.fnmatchcase(name, pattern)]
            old = [name for name in deprecated if fnmatch.fnmatchcase(name, pattern)] if not new else []
            for name in new:
                keys.setdefault(name, set()).add(name)
            for name in old:
                keys.setdefault(deprecated[name], set()).add(name)
            old_patterns += [pattern] if old else []
            if not new and not old:
                raise InputError(f"capture {pattern!r} matches no internal; names look like 'layer1.query' "
                                 f"(layers 1..{L}, as hidden_states[1..{L}]) with internals {', '.join(INTERNALS)}")
        if old_patterns:
            warn_caller(f"minibert: capture {', '.join(map(repr, old_patterns))}: the old 0-based names "
                        "'layer.{i}.{internal}', accepted for this release only; encoder layers are now numbered "
                        "from 1 as in hidden_states: 'layer.0.query' is 'layer1.query'", DeprecationWarning)
        return CaptureRequest(frozenset(keys), {name: tuple(sorted(spellings)) for name, spellings in keys.items()})

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
                          "use 0 for single texts"
                          + (", 1 for the second text of a pair" if c.type_vocab_size > 1 else ""))
        if B == 0:
            T = max(T, 1)          # an empty batch: zero rows of one token, so every [:, 0] still exists
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(B, T)
        mask = (np.ones((B, T), dtype=np.int64) if mask is None
                else np.ascontiguousarray(mask, dtype=np.int64).reshape(B, T))
        types = (np.zeros((B, T), dtype=np.int64) if types is None
                 else np.ascontiguousarray(types, dtype=np.int64).reshape(B, T))
        return ids, mask, types


def first_outside(name, array, size, what, fix):
    """InputError naming the first entry of an integer array outside 0..size-1."""
    if array.size and (array.min() < 0 or array.max() >= size):
        bad = np.argwhere((array < 0) | (array >= size))[0]
        raise InputError(f"{name}[{bad[0]}, {bad[1]}] = {array[tuple(bad)]} is outside {what} (0..{size - 1}); {fix}")
