"""Reading a model directory's files: regular files only, each of a bounded size; writing outputs whole.

A FIFO named config.json blocks the first read forever, /dev/zero linked as a tokenizer file reads until
memory runs out, and a JSON file of gigabytes is not a config: each is refused before any byte is read,
with a message naming the file. Callers pass their own error class (ConfigError, TokenizerError,
ModelFileError), so the error says which part of the model is at fault.

The numbers a checkpoint's header gives (sizes, strides, offsets, element counts) are bounded here before
any arithmetic: Python multiplies ints of any length, so a shape of huge numbers would take minutes, and
an int of more than 4,300 digits cannot even be formatted into a message.
"""

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

MiB = 1 << 20
SETTINGS_LIMIT = 64 * MiB      # config.json, tokenizer_config.json, special_tokens_map.json, shard indexes
TOKENIZER_LIMIT = 512 * MiB    # tokenizer.json, vocab.txt, vocab.json, merges.txt (the largest known: ~35 MiB)
NUMBER_LIMIT = 2 ** 63         # safetensors and torch write sizes, strides and offsets as 64-bit ints
MAX_DIMS = 32                  # NumPy 1.x's limit (2.x: 64); checkpoint tensors have 1 to 4

FILE_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket")]


def kind_of(mode: int) -> str:
    return next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")


def regular_size(path: Path, error, what: str):
    """The size of `path` (links followed) if it is a regular file, None if nothing is there; raises
    `error` for anything else, without opening it."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise error(f"{path}: {what} cannot be read ({e.strerror or e}); check the file and its permissions") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: {what} is {kind_of(info.st_mode)}, not a regular file; minibert reads only "
                    "regular files (copy the real file there)")
    return info.st_size


def is_present(path: Path, error, what: str) -> bool:
    """True for a regular file, False when nothing is there; raises `error` for a FIFO, device, directory."""
    return regular_size(path, error, what) is not None


def open_regular(path: Path, error, what: str):
    """`path` opened for unbuffered binary reading, checked twice: by name before opening, then on the opened
    file (opened O_NONBLOCK, so that a FIFO swapped in between cannot block the open).
    FileNotFoundError passes through to the caller."""
    if regular_size(path, error, what) is None:
        raise FileNotFoundError(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{path}: {what} cannot be read ({e.strerror or e}); check the file and its permissions") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path}: {what} is {kind_of(mode)}, not a regular file; minibert reads only "
                    "regular files (copy the real file there)")
    return open(fd, "rb", buffering=0)


def read_limited(path: Path, limit: int, error, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (at most limit + 1 are read, whatever its size
    said); FileNotFoundError passes through to the caller."""
    with open_regular(path, error, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise error(too_large(path, what, size, limit))
        chunks, total = [], 0
        try:
            while total <= limit:      # a file that grows after the check still stops at limit + 1 bytes
                wanted = size + 1 - total if total < size else limit + 1 - total   # the stated size, then more
                chunk = f.read(wanted)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as e:
            raise error(f"{path}: {what} cannot be read ({e.strerror or e}); check the file") from None
    if total > limit:
        raise error(too_large(path, what, total, limit))
    return b"".join(chunks)


def too_large(path, what, size, limit) -> str:
    return (f"{path}: {what} holds {size:,} bytes, more than the {limit // MiB} MiB minibert accepts for it; "
            "is it the right file?")


def read_json(path: Path, limit: int, error, what: str):
    """A JSON document from a regular file of at most `limit` bytes; FileNotFoundError passes through,
    anything else that goes wrong raises `error` naming the file."""
    data = read_limited(path, limit, error, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise error(f"{path}: cannot read {what} as JSON ({type(e).__name__}: {e}); "
                    "re-download it or the model") from None


def sha256_of_file(f) -> str:
    """Read in blocks: hashlib.file_digest would need Python 3.11, and 3.9 is supported."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


# ---- writing: every output is complete or absent ---------------------------------------------------------------
# An output is written under a temporary name beside it (the same directory, so the rename is atomic) and
# renamed into place only once complete: a full disk, a refusal or Ctrl-C half-way leaves the file the user
# had, never an empty or truncated one.

WRITE_ADVICE = {errno.ENOSPC: "free some disk space or write elsewhere", errno.EDQUOT: "the disk quota is spent; "
                "free some space or write elsewhere", errno.EACCES: "check its permissions or write elsewhere",
                errno.EPERM: "check its permissions or write elsewhere",
                errno.EROFS: "the file system is read-only; write elsewhere"}


def write_failure(path, error: OSError):
    """One OutputError line for an OSError met while writing `path`."""
    from .errors import OutputError
    advice = WRITE_ADVICE.get(error.errno, "check the disk and the folder, or write elsewhere")
    return OutputError(f"{path}: cannot write it ({error.strerror or error}); {advice}; nothing was "
                       "changed there")


def output_mode(directory=False) -> int:
    """The permissions open() would give a new file (directory): 0o666 (0o777) less the umask, so every
    file minibert writes gets the same ones (mkstemp alone makes 0600 files)."""
    umask = os.umask(0)      # the only way to read it; put back at once
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def remove_quietly(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


@contextmanager
def atomic_file(path, mode="wb", encoding=None):
    """Yields a file object open on a temporary name beside `path`; when the block ends normally the file
    is flushed, synced and renamed to `path`. On any exception (KeyboardInterrupt included) the temporary
    is removed and `path` is untouched; an OSError while writing becomes one OutputError naming `path`."""
    path = Path(path)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        try:
            os.fchmod(fd, output_mode())
            with open(fd, mode, encoding=encoding, newline="" if encoding else None) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except OSError as e:
            raise write_failure(path, e) from None
    except BaseException:
        remove_quietly(temporary)
        raise


def write_bytes(path, data: bytes):
    with atomic_file(path) as f:
        f.write(data)


@contextmanager
def atomic_directory(path):
    """Yields a new, empty temporary directory beside `path`; when the block ends normally it takes
    `path`'s place whole (what was there before goes, so no file of an earlier run stays behind). On any
    exception the temporary directory is removed and `path` is untouched. Replacing a non-empty directory
    is two renames (the old one aside, the new one in), then the old one is deleted."""
    path = Path(path)
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(temporary, output_mode(directory=True))
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        try:
            yield temporary
            for child in temporary.iterdir():       # on disk before the rename makes them the output
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
            if path.is_dir() and any(path.iterdir()):
                aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, aside / path.name)
                os.replace(temporary, path)
                remove_quietly(aside)
            else:
                os.replace(temporary, path)          # over nothing, or over an empty directory
        except OSError as e:
            raise write_failure(path, e) from None
    except BaseException:
        remove_quietly(temporary)
        raise


class LongNumber(NamedTuple):
    """A JSON integer of more digits than any size has, left unconverted (converting is quadratic in its length)."""
    digits: int


def header_int(text: str):
    """parse_int for json.loads of a checkpoint header: an int, or a LongNumber the checks below refuse."""
    return int(text) if len(text) <= 20 else LongNumber(len(text.lstrip("-")))


def is_size(value) -> bool:
    """A size, stride, offset or count as a file may give it: a non-bool int from 0 to 2**63 - 1."""
    return type(value) is int and 0 <= value < NUMBER_LIMIT


def shown(value, depth: int = 0) -> str:
    """A value read from a file, for a message: short whatever its size (a long list, a long string, an
    int of 100,000 digits, which str() refuses, are cut or described)."""
    if isinstance(value, LongNumber):
        return f"<a number of {value.digits:,} digits>"
    if type(value) is int and not -NUMBER_LIMIT <= value < NUMBER_LIMIT:
        return f"<a number of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
    if isinstance(value, (list, tuple)) and depth < 2:
        items = [shown(v, depth + 1) for v in value[:8]] + ([f"... {len(value) - 8:,} more"] if len(value) > 8 else [])
        return (f"[{', '.join(items)}]" if isinstance(value, list)
                else f"({', '.join(items)}{',' if len(value) == 1 else ''})")
    if isinstance(value, str):
        return repr(value[:80]) + ("..." if len(value) > 80 else "")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {type(value).__name__}"


def shape_problem(shape, itemsize: int, strides=None):
    """What makes a tensor's shape (and strides, for a view) from a file unusable, or None. At most MAX_DIMS
    sizes, each is_size, whose non-zero ones multiply to fewer than 2**63 bytes (NumPy's limit; it counts a
    zero-size tensor's other sizes too). Checked in that order, so no long list is walked and no product
    grows past 2**126."""
    if not isinstance(shape, (list, tuple)):
        return f"shape {shown(shape)} is not a list of sizes"
    if len(shape) > MAX_DIMS:
        return f"shape {shown(shape)} has {len(shape):,} dimensions, more than the {MAX_DIMS} minibert reads"
    if not all(is_size(n) for n in shape):
        return f"shape {shown(shape)} is not a list of ints from 0 to 2**63 - 1"
    if strides is not None and (not isinstance(strides, (list, tuple)) or len(strides) != len(shape)
                                or not all(is_size(s) for s in strides)):
        return f"strides {shown(strides)} are not {len(shape)} ints from 0 to 2**63 - 1, one per size"
    product = itemsize
    for n in shape:
        product *= max(n, 1)
        if product >= NUMBER_LIMIT:
            return f"shape {shown(shape)} spans 2**63 bytes or more"
    return None
