"""Reading a model directory's files: regular files only, each of a bounded size.

A FIFO named config.json blocks the first read forever, /dev/zero linked as a tokenizer file reads until
memory runs out, and a JSON file of gigabytes is not a config: each is refused before any byte is read,
with a message naming the file. Callers pass their own error class (ConfigError, TokenizerError,
ModelFileError), so the error says which part of the model is at fault.
"""

import json
import os
import stat
from pathlib import Path

MiB = 1 << 20
SETTINGS_LIMIT = 64 * MiB      # config.json, tokenizer_config.json, special_tokens_map.json, shard indexes
TOKENIZER_LIMIT = 512 * MiB    # tokenizer.json, vocab.txt, vocab.json, merges.txt (the largest known: ~35 MiB)

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
