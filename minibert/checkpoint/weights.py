"""Checkpoint tensors -> minibert's weights dict, by the name tables of minibert/checkpoint/families.py.

The result is a nested dict of arrays in the compute dtype, linear weights stored (in, out) so the
model reads `x @ w + b`, and Q, K, V fused into one (H, 3H) projection. E is the embedding width
(hidden_size H except for ALBERT and ELECTRA):

    {"embeddings": {"word": [V, E], "position": [P, E], "token_type": [TV, E], "ln": {"g": [E], "b": [E]}},
     "embedding_projection": {"w": [E, H], "b": [H]} or None,
     "layers": [{"qkv": {"w": [H, 3H], "b": [3H]}, "attn_out": {"w": [H, H], "b": [H]}, "attn_ln": {...},
                 "ffn_in": {"w": [H, I], "b": [I]}, "ffn_out": {"w": [I, H], "b": [H]}, "ffn_ln": {...}}, ...],
     "pooler": {"w": [H, H], "b": [H]} or None,
     "relative_attention_bias": {"table": [buckets, NH]} or None}

Families differ only in names and in what is present: "layers" holds num_hidden_layers entries, but ALBERT's
point to the same dict objects (one per hidden group), DistilBERT's token_type is one row of zeros (it has
no segment embedding), only ALBERT and ELECTRA have an embedding projection, and only MPNet a relative
position bias table (one for all layers).
"""

import errno
import json
import os
import posixpath
import struct
import tempfile
from pathlib import Path

import numpy as np

from .. import files
from . import torch_bin as torch_checkpoint
from .config import Config
from ..errors import ModelFileError
from .families import FAMILIES, LEGACY_SUFFIXES, family_of
from ..tree import size

# The checkpoint names are the families' (families.py): minibert name <- checkpoint name(s), by arrangement.
FAMILY_NAMES = {model_type: family.names for model_type, family in FAMILIES.items()}


def expected_shapes(c: Config) -> dict:
    E, H, I = c.embedding_size, c.hidden_size, c.intermediate_size
    return {
        "embeddings.word": (c.vocab_size, E), "embeddings.position": (c.max_position_embeddings, E),
        "embeddings.token_type": (c.type_vocab_size, E), "embeddings.ln.g": (E,), "embeddings.ln.b": (E,),
        "embedding_projection.w": (E, H), "embedding_projection.b": (H,),
        "qkv.w": (H, 3 * H), "qkv.b": (3 * H,), "attn_out.w": (H, H), "attn_out.b": (H,),
        "attn_ln.g": (H,), "attn_ln.b": (H,), "ffn_in.w": (H, I), "ffn_in.b": (I,),
        "ffn_out.w": (I, H), "ffn_out.b": (H,), "ffn_ln.g": (H,), "ffn_ln.b": (H,),
        "pooler.w": (H, H), "pooler.b": (H,),
        "relative_attention_bias.table": (c.relative_attention_num_buckets, c.num_attention_heads),
    }


def sinusoidal_positions(num_positions: int, width: int) -> np.ndarray:
    """DistilBERT's fixed table: sin on even columns, cos on odd, of pos / 10000^(2 * (j // 2) / width).

    Rounded through float32 because transformers builds it in float32, so float64 runs match too.
    """
    angle = np.arange(num_positions)[:, None] / np.power(10000.0, 2 * (np.arange(width) // 2) / width)   # [P, E]
    return np.where(np.arange(width) % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)          # [P, E]


def weight_set_of_layer(config: Config) -> list:
    """Which set of layer weights each layer uses: ALBERT's group int(i / (L / G)); its own set when G == L."""
    L, G = config.num_hidden_layers, config.num_hidden_groups
    return [int(i / (L / G)) for i in range(L)]


# The layouts minibert reads, in order of preference: (single file, shard index).
LAYOUTS = [("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")]


def checkpoint_files(model_dir: Path) -> list:
    """model.safetensors, or the shards its index names; else pytorch_model.bin, or the shards its index
    names (safetensors first: it needs no unpickling and maps without conversion)."""
    for single, index in ((model_dir / a, model_dir / b) for a, b in LAYOUTS):
        if files.is_present(single, ModelFileError, "the checkpoint"):
            return [single]
        if files.is_present(index, ModelFileError, "the shard index"):
            return shard_files(model_dir, index)
    found = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.h5"))
    hint = f" (found {', '.join(found)}: convert it to safetensors)" if found else ""
    raise ModelFileError(f"{model_dir}: no model.safetensors, pytorch_model.bin or a shard index of either{hint}")


def check_model_directory(model_dir: Path) -> None:
    """One error naming every missing part when neither weights nor a tokenizer are there (a wrong directory,
    a download that fetched only some files), instead of only the first one load would meet."""
    from ..tokenizer import has_tokenizer_files, tokenizer_dir
    if any(files.is_present(model_dir / name, ModelFileError, name) for layout in LAYOUTS for name in layout):
        return
    if has_tokenizer_files(tokenizer_dir(model_dir)):
        return
    missing = ["weights (model.safetensors, pytorch_model.bin or a shard index of either)",
               "a tokenizer (tokenizer.json, vocab.txt, or vocab.json + merges.txt)"]
    if not files.is_present(model_dir / "config.json", ModelFileError, "config.json"):
        missing.insert(0, "config.json")
    try:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in model_dir.iterdir())
    except OSError as e:
        found = [f"(cannot list: {e.strerror or e})"]
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "") if found else "nothing"
    raise ModelFileError(f"{model_dir}: missing {', '.join(missing[:-1])} and {missing[-1]} (found {shown}); "
                         "is this the model's directory?")


def used_and_ignored_files(model_dir: Path, encoder_path: str, tokenizer_files, recipe_files=()) -> tuple:
    """(files load read, other entries), by path relative to model_dir, for `minibert inspect`: the recipe's
    files, then the encoder's (in encoder_path, "" for the root) and its tokenizer's ("../vocab.txt" when read
    one level up). Unused entries of model_dir and of every folder holding a used file are listed as ignored;
    a folder nothing was read from is one entry ("2_Dense/")."""
    encoder_dir = model_dir / encoder_path
    weights = [p.name for p in checkpoint_files(encoder_dir)]
    index = [name for single, name in LAYOUTS if (encoder_dir / name).is_file() and single not in weights]
    encoder_files = [posixpath.normpath(posixpath.join(encoder_path or ".", name))
                     for name in ["config.json", *index, *weights, *tokenizer_files]]
    used = list(dict.fromkeys([*recipe_files, *encoder_files]))
    folders = {""} | {posixpath.dirname(name) for name in used if not name.startswith("../")}
    ignored = []
    for folder in sorted(folders):
        for entry in sorted((model_dir / folder).iterdir()):
            name = posixpath.join(folder, entry.name) if folder else entry.name
            if name in used or name in folders:
                continue
            ignored.append(name + ("/" if entry.is_dir() else ""))
    return used, ignored


def shard_files(model_dir: Path, index: Path) -> list:
    try:
        raw = files.read_limited(index, files.SETTINGS_LIMIT, ModelFileError, "the shard index")
        weight_map = json.loads(raw.decode("utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ModelFileError(f"{index}: cannot read the shard index ({type(e).__name__}: {e}); "
                             "re-download it or the checkpoint") from None
    for name in shards:
        if not isinstance(name, str) or Path(name).name != name or not name:
            raise ModelFileError(f"{index}: shard name {name!r} is not a file name in the model directory")
    return [model_dir / name for name in shards]


# Bytes per element of every dtype the safetensors format defines.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
HEADER_LIMIT = 100 * 1024 * 1024      # the safetensors library refuses larger headers too


def read_header(path: Path) -> dict:
    """Check a safetensors file's layout before any tensor is read; returns its header.

    The file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
    then the tensors' bytes. Every way that can be wrong (truncation, a length past the end, bad JSON,
    unknown dtypes, offsets that disagree with the shape or leave gaps or overlaps) is a ModelFileError
    here, so that every byte range read later lies inside the file.
    """
    fix = "re-download or re-save the checkpoint"
    if not files.is_present(path, ModelFileError, "the checkpoint"):
        raise ModelFileError(f"{path}: safetensors file not found")
    try:
        with files.open_regular(path, ModelFileError, "the checkpoint") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: truncated ({size} bytes): a safetensors file starts with an 8-byte "
                                     f"header length; {fix}")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, HEADER_LIMIT):
                raise ModelFileError(f"{path}: corrupt or truncated: the header claims {length} bytes but the file "
                                     f"holds {size} bytes; {fix}")
            raw = f.read(length)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: safetensors file not found") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e}); check the file's permissions") from None
    try:
        header = json.loads(raw.decode("utf-8"), parse_int=files.header_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: the header is not valid JSON ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: the header is not a JSON object; {fix}")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{path}: __metadata__ must map names to strings; {fix}")
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = entry_problem(entry, data_size)
        if problem:
            raise ModelFileError(f"{path}: tensor {files.shown(name)}: {problem}; {fix}")
        spans.append((entry["data_offsets"][0], entry["data_offsets"][1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise ModelFileError(f"{path}: tensor {name!r} starts at byte {start} of the data but the previous "
                                 f"tensor ends at {end} ({'overlap' if start < end else 'gap'}); {fix}")
        end = stop
    if end != data_size:
        raise ModelFileError(f"{path}: the tensors cover {end} bytes but the file holds {data_size} bytes of data "
                             f"({'truncated' if end > data_size else 'trailing bytes'}); {fix}")
    return header


def entry_problem(entry, data_size):
    """What is wrong with one header entry, or None. Every number is bounded (files.shape_problem,
    files.is_size) before it is multiplied or printed."""
    if not isinstance(entry, dict):
        return "its entry is not a JSON object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return f"unknown dtype {files.shown(dtype)}"
    problem = files.shape_problem(shape, SAFETENSORS_DTYPES[dtype])
    if problem:
        return problem
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(files.is_size(n) for n in offsets)
            or offsets[0] > offsets[1]):
        return f"data_offsets {files.shown(offsets)} are not a [start, end] pair of byte positions"
    if offsets[1] > data_size:
        return (f"data_offsets {offsets} end past the file's {data_size} bytes of data (the file is truncated "
                "or its header is corrupt)")
    count = 1
    for n in shape:
        count *= n
    if count * SAFETENSORS_DTYPES[dtype] != offsets[1] - offsets[0]:
        return (f"shape {shape} of {dtype} needs {count * SAFETENSORS_DTYPES[dtype]} bytes but data_offsets give "
                f"{offsets[1] - offsets[0]}")
    return None


class Checkpoint:
    """Lazy access to the tensors of one or more safetensors files, by checkpoint name."""

    def __init__(self, paths):
        self.location = {}   # checkpoint name -> (file, dtype string, shape, (first byte, end byte) in the file,
                             #   strides in elements, None when C-contiguous)
        self.identity = {}   # file -> what identifies its contents (see file_identity), as the header was read
        for path in paths:
            if torch_checkpoint.is_torch_file(path):
                self.add(path, torch_checkpoint.read_tensors(path))
                self.identity[path] = file_identity(path)
                continue
            header = read_header(path)
            self.identity[path] = file_identity(path)
            base = data_start(path)
            # Not opened with the safetensors library as well: it maps the whole file, and a truncation while
            # it reads the header would kill the process with SIGBUS; read_header checks every byte range used.
            self.add(path, {name: (entry["dtype"], tuple(entry["shape"]), None,
                                   (base + entry["data_offsets"][0], base + entry["data_offsets"][1]))
                            for name, entry in header.items() if name != "__metadata__"})

    def add(self, path: Path, tensors: dict) -> None:
        """tensors: name -> (dtype, shape, strides in elements or None when C-contiguous, byte span)."""
        for name, (dtype, shape, strides, span) in tensors.items():
            if name in self.location:
                raise ModelFileError(f"{path}: tensor {name!r} is also in {self.location[name][0]}; "
                                     "the shards must not repeat tensors")
            self.location[name] = (path, dtype, shape, span, strides)

    def names(self):
        return self.location.keys()

    def read(self, name: str, dtype, mapped=False) -> np.ndarray:
        """The tensor as `dtype`; mapped=True: where no conversion is needed, a read-only map of a private
        copy of its bytes (see private_copy), so only the parts that are used become resident."""
        path, stored, shape, span, strides = self.location[name]
        if mapped and strides is None and FLOAT_DTYPES.get(stored) == np.dtype(dtype).newbyteorder("<").str:
            array = private_copy(path, span, FLOAT_DTYPES[stored], shape)
            if array is not None:
                return array
        if stored in ("F32", "F16", "F64"):
            array = arranged(read_raw(path, span, FLOAT_DTYPES[stored]), shape, strides)
        elif stored == "BF16":        # NumPy has no bfloat16: widen the raw 16-bit words to float32 (exact)
            array = (arranged(read_raw(path, span, "<u2"), shape, strides).astype(np.uint32) << 16).view(np.float32)
        else:
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {stored}; "
                                 "minibert reads floating-point weights (F32, F16, BF16, F64)")
        return narrowed(array, dtype, f"{path}: tensor {name!r}")

    def check_unchanged(self) -> None:
        """Raise ModelFileError if a file changed since its header was read: the tensors read may mix
        two versions of it."""
        for path, identity in self.identity.items():
            if file_identity(path) != identity:
                raise ModelFileError(f"{path}: changed while minibert was reading it (a download or copy still "
                                     "running?); load the model again once the file is complete")


def arranged(flat: np.ndarray, shape: tuple, strides) -> np.ndarray:
    """A tensor from the elements its byte span covers: reshaped, or for a strided view (a PyTorch tensor
    saved as a transpose or slice of a larger storage) gathered through its strides into a new array."""
    if strides is None:
        return flat.reshape(shape)
    view = np.lib.stride_tricks.as_strided(flat, shape=shape, strides=[s * flat.itemsize for s in strides],
                                           writeable=False)     # every element inside flat: checked on reading the file
    return np.array(view)


def file_identity(path: Path) -> tuple:
    """(device, inode, size, mtime, ctime) of a file: any write, truncation or replacement changes one of them
    (ctime even when a copy restores the old mtime)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def narrowed(array: np.ndarray, dtype, where: str) -> np.ndarray:
    """array as dtype; refuses float64 values that float32 cannot hold, which the cast would make inf."""
    if array.dtype == np.float64 and np.dtype(dtype) == np.float32:
        with np.errstate(over="ignore"):
            converted = array.astype(np.float32)
        overflow = int(np.count_nonzero(np.isinf(converted) & np.isfinite(array)))
        if overflow:
            raise ModelFileError(f"{where}: {overflow:,} of {array.size:,} float64 values are beyond float32's range "
                                 f"(+-{np.finfo(np.float32).max:.4g}) and would become inf; load with dtype='float64'")
        return converted
    return array.astype(dtype, copy=False)


COPY_CHUNK = 1 << 20


def private_copy(path: Path, span, dtype, shape):
    """A tensor's bytes copied into a temporary file that only this process holds, mapped read-only; None
    where the temporary directory has no room (the caller then reads the tensor into memory).

    Why not a map of the checkpoint itself: truncating or rewriting the checkpoint in place under a loaded
    model (a re-download into the same path) killed the process with SIGBUS at the next read of a page past
    the new end, or changed its numbers; a private (copy-on-write) map does not protect against truncation
    either. Why a map and not memory: the word table is half of a small model's bytes and a text reads a few
    of its rows; a map keeps only those resident (the cold start's peak memory). The temporary file is
    unlinked as it is created, so nothing else can truncate it, and the kernel copies the bytes
    (copy_file_range) without passing them through this process's memory.
    """
    start, end = span
    if end == start:
        return None
    try:
        copy = tempfile.TemporaryFile(prefix="minibert-", buffering=0)
    except OSError:
        return None
    with copy:
        try:
            with files.open_regular(path, ModelFileError, "the checkpoint") as source:
                copy_bytes(source, copy, start, end - start, path)
            return np.memmap(copy, dtype=dtype, mode="r", shape=shape)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: disappeared while minibert was reading it; load the model again") from None
        except OSError:          # no room (ENOSPC, EDQUOT) or no map: read into memory instead
            return None


def copy_bytes(source, target, start: int, count: int, path: Path) -> None:
    """Bytes [start, start + count) of source into target from its beginning; a source that ends early
    (truncated while being read) is a ModelFileError."""
    done = 0
    in_kernel = hasattr(os, "copy_file_range")
    while done < count:
        if in_kernel:
            try:
                n = os.copy_file_range(source.fileno(), target.fileno(), count - done, start + done, done)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    raise
                in_kernel = False       # this filesystem pair cannot: copy through a buffer
                continue
        else:
            source.seek(start + done)
            chunk = source.read(min(COPY_CHUNK, count - done))
            target.seek(done)
            n = target.write(chunk) if chunk else 0
        if n == 0:
            raise ModelFileError(f"{path}: ends before byte {start + count} (truncated while minibert was reading "
                                 "it?); load the model again once the file is complete")
        done += n


FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def read_raw(path: Path, span, dtype) -> np.ndarray:
    """One tensor's bytes (the file's [first, end) span, which read_header checked) as a flat array, read
    with ordinary reads.

    Not through a memory map: a mapped file's pages count in the process's resident memory while it stays
    mapped, which raised the peak of loading a model by the size of its checkpoint."""
    start, end = span
    count = (end - start) // np.dtype(dtype).itemsize
    try:
        with files.open_regular(path, ModelFileError, "the checkpoint") as f:
            f.seek(start)
            array = np.fromfile(f, dtype=dtype, count=count)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e}); check the file") from None
    if array.size != count:
        raise ModelFileError(f"{path}: ends before byte {end} (truncated while minibert was reading it?); "
                             "load the model again once the file is complete")
    return array


def data_start(path: Path) -> int:
    """Byte position of the tensors' data: after the 8-byte header length and the header."""
    try:
        with files.open_regular(path, ModelFileError, "the checkpoint") as f:
            return 8 + struct.unpack("<Q", f.read(8))[0]
    except (OSError, struct.error) as e:
        raise ModelFileError(f"{path}: cannot be read ({e.strerror or e}); check the file") from None


def canonical(name: str, model_prefixes: tuple) -> str:
    for prefix in model_prefixes:
        if name.startswith(prefix):
            name = name[len(prefix):]
    for old, new in LEGACY_SUFFIXES.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    return name


def load_weights(model_dir: Path, config: Config, dtype) -> dict:
    """Read, check and arrange every tensor; raise ModelFileError naming any missing, extra or misshapen one."""
    checkpoint = Checkpoint(checkpoint_files(model_dir))
    names = family_of(config).names
    by_name = {canonical(n, names.model_prefixes): n for n in checkpoint.names()}
    shapes = expected_shapes(config)
    used = set()

    def fetch(ours: str, theirs, arrangement: str, shape_key: str) -> np.ndarray:
        names = (theirs,) if isinstance(theirs, str) else theirs
        parts = []
        for name in names:
            if name not in by_name:
                raise ModelFileError(f"{model_dir}: tensor {name!r} (minibert {ours}) is missing from the checkpoint "
                                     f"(model_type {config.model_type!r})")
            original = by_name[name]
            used.add(original)
            # The word table is most of a small model's bytes and a text reads a few of its rows: map it.
            parts.append(checkpoint.read(original, dtype, mapped=ours == "embeddings.word"))
        try:
            if arrangement == "transpose":
                array = parts[0].T
            elif arrangement == "transpose_concat":
                array = np.concatenate([p.T for p in parts], axis=1)
            elif arrangement == "concat":
                array = np.concatenate(parts)
            else:
                array = parts[0]
        except ValueError:       # parts that cannot be joined (Q, K, V of different shapes)
            array = None
        if array is None or array.shape != shapes[shape_key]:
            found = " + ".join(str(checkpoint.location[by_name[name]][2]) for name in names)
            raise ModelFileError(f"{model_dir}: tensor {' + '.join(names)} has shape {found}; "
                                 f"the config implies {shapes[shape_key]} (after arranging as {arrangement}) "
                                 "- does config.json belong to this checkpoint?")
        return np.ascontiguousarray(array)

    def nest(table, index=None):
        block = {}
        for ours, theirs, arrangement in table:
            if index is not None:
                theirs = (theirs.format(i=index) if isinstance(theirs, str)
                          else tuple(t.format(i=index) for t in theirs))
            *path, leaf = ours.split(".")
            node = block
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = fetch(ours, theirs, arrangement, ours)
        return block

    embedding_table = names.embeddings
    position_name = dict((ours, theirs) for ours, theirs, _ in embedding_table)["embeddings.position"]
    generate_positions = config.sinusoidal_positions and position_name not in by_name
    if generate_positions:   # transformers builds the fixed table itself when a checkpoint leaves it out
        embedding_table = [row for row in embedding_table if row[0] != "embeddings.position"]
    embeddings = nest(embedding_table)["embeddings"]
    if generate_positions:
        embeddings["position"] = sinusoidal_positions(config.max_position_embeddings,
                                                      config.embedding_size).astype(dtype)
    if not config.token_type_embeddings:   # no segment embedding: every token adds row 0, all zeros
        embeddings["token_type"] = np.zeros((config.type_vocab_size, config.embedding_size), dtype=dtype)
    weights = {"embeddings": embeddings}
    weights["embedding_projection"] = (nest(names.projection)["embedding_projection"]
                                       if config.embedding_projection else None)
    # One dict per set of layer weights; layers sharing a set (ALBERT) hold the same dict object.
    weight_sets = [nest(names.layer, index=g) for g in range(config.num_hidden_groups)]
    weights["layers"] = [weight_sets[g] for g in weight_set_of_layer(config)]
    has_pooler = bool(names.pooler) and all(name in by_name for _, name, _ in names.pooler)
    weights["pooler"] = nest(names.pooler)["pooler"] if has_pooler else None
    weights["relative_attention_bias"] = (nest(names.relative_bias)["relative_attention_bias"]
                                          if config.relative_attention_num_buckets else None)

    unexpected = sorted(original for name, original in by_name.items()
                        if original not in used and not name.startswith(names.ignored_prefixes))
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else "")
        raise ModelFileError(f"{model_dir}: unexpected tensor(s) {shown}; the checkpoint does not match "
                             f"config.json ({config.num_hidden_layers} layers, {config.num_hidden_groups} sets of "
                             f"layer weights, model_type {config.model_type!r})")
    checkpoint.check_unchanged()
    return weights


def non_finite_tensors(model_dir: Path) -> list:
    """(checkpoint tensor name, NaN count, Inf count, element count) for every floating-point tensor of the
    checkpoint holding NaN or Inf, in file order; read one tensor at a time in its stored precision."""
    checkpoint = Checkpoint(checkpoint_files(Path(model_dir)))
    found = []
    for name, (path, stored, *_) in checkpoint.location.items():
        if stored not in ("F16", "BF16", "F32", "F64"):
            continue
        array = checkpoint.read(name, np.float64 if stored == "F64" else np.float32)
        nan = int(np.isnan(array).sum())
        inf = int(np.isinf(array).sum())
        if nan or inf:
            found.append((name, nan, inf, int(array.size)))
    return found


def parameter_counts(weights: dict) -> dict:
    """Parameters per block, for `minibert inspect`; a set of layer weights shared by several layers counts once."""
    counts = {"embeddings": size(weights["embeddings"])}
    if weights.get("embedding_projection") is not None:
        counts["embedding_projection"] = size(weights["embedding_projection"])
    users = {}   # id of a layer-weights dict -> the layers using it, in order
    for i, layer in enumerate(weights["layers"], start=1):       # layer i: the one producing hidden_states[i]
        users.setdefault(id(layer), (layer, []))[1].append(i)
    for layer, indices in users.values():
        name = f"layer{indices[0]}" if len(indices) == 1 else f"layer{indices[0]}-{indices[-1]} (shared)"
        if len(indices) > 1 and indices != list(range(indices[0], indices[-1] + 1)):
            name = f"layer{','.join(map(str, indices))} (shared)"
        counts[name] = size(layer)
    counts["pooler"] = size(weights["pooler"])
    if weights.get("relative_attention_bias") is not None:
        counts["relative_attention_bias"] = size(weights["relative_attention_bias"])
    return counts
