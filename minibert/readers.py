"""Corpus files read as their formats define them, as a stream.

    .txt    one text per line; a line ends at "\\n" ("\\r\\n" accepted) and at nothing else: form feeds,
            vertical tabs, U+2028/2029, NEL and the separators \\x1c-\\x1e are characters of the text
    .jsonl  one JSON value per non-blank line, the text in a string field (U+2028 may sit in a string)
    .csv    standard quoting (a quoted field may hold commas, quotes and newlines), fields of any size
    .tsv    fields split at tabs with no quoting at all (GLUE's convention): '"' is an ordinary character
    all     UTF-8 with an optional byte-order mark; invalid UTF-8 is refused naming the line and byte offset
    (any other suffix is read as .txt; .parquet is read whole, one column, through pyarrow: read_parquet_texts)

open_texts(path, field) reads a file once to count its texts, hash its bytes and note where every CHUNK-th
text starts; `texts[start:stop]` then reads just those chunks again and checks that their bytes are the
ones hashed. So the corpus is never held whole in memory, the recorded hash is that of the bytes that were
encoded, and a file rewritten during a run is refused instead of mixed in. open_corpus (any format,
Parquet included) and read_texts (the same, as a list) are what extract, search and the CLI call;
jsonl_records splits JSON Lines for the probe files; sha256_of fingerprints an input file for manifests.
"""

import csv
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import InputError

CHUNK = 4096                    # texts per indexed chunk: a re-read costs at most one chunk
BOM = b"\xef\xbb\xbf"
# csv refuses fields over 128 KiB by default; a text of any length is a legitimate field. 2**31 - 1 fits
# the C long the limit is stored in on every platform (sys.maxsize overflows it on Windows).
CSV_FIELD_LIMIT = 2 ** 31 - 1


class Lines:
    """The lines of a binary file from byte `start` to `end` (None: the end of the file), split at b"\\n"
    only, each with its byte offset and 1-based line number. Lines read are kept until `take` hands them
    on (to be hashed), so the hash of a chunk can stop exactly where the chunk's first text begins."""

    def __init__(self, f, start, end, lines_before):
        self.f, self.position, self.end, self.number = f, start, end, lines_before
        self.pending = []                     # [(offset, raw line)] read, not yet taken
        f.seek(start)

    def __iter__(self):
        return self

    def __next__(self):
        limit = -1 if self.end is None else self.end - self.position
        raw = self.f.readline(limit) if limit != 0 else b""
        if not raw:
            raise StopIteration
        offset = self.position
        self.position += len(raw)
        self.number += 1
        self.pending.append((offset, raw))
        return offset, self.number, raw

    def take(self, before=None):
        """The raw lines read that start before byte `before` (None: all of them), in file order."""
        taken = [raw for offset, raw in self.pending if before is None or offset < before]
        self.pending = self.pending[len(taken):]
        return taken


def decode(path, offset, number, raw):
    """One line's bytes as text (a byte-order mark at the start of the file dropped); InputError otherwise."""
    skip = 3 if offset == 0 and raw.startswith(BOM) else 0
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{number}: not valid UTF-8 at byte {offset + skip + e.start} of the file "
                         f"({e.reason}: {raw[skip + e.start:skip + e.end]!r}); re-encode it as UTF-8") from None


def without_newline(line):
    line = line[:-1] if line.endswith("\n") else line
    return line[:-1] if line.endswith("\r") else line


def kind_of(path):
    suffix = Path(path).suffix.lower()
    return suffix if suffix in (".jsonl", ".csv", ".tsv") else ".txt"


def text_records(path, lines, field, header):
    """(offset, line number, text) per text in the lines, for every format. `header` is a dict: empty when
    the lines start at the top of the file (csv/tsv: the header is read and its "column" stored there), else
    the one filled then."""
    kind = kind_of(path)
    if kind == ".txt":
        for offset, number, raw in lines:
            yield offset, number, without_newline(decode(path, offset, number, raw))
    elif kind == ".jsonl":
        for offset, number, raw in lines:
            line = decode(path, offset, number, raw)
            if not line.strip(" \t\r\n"):                # JSON's whitespace only: U+2028 is no blank
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON ({e})") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise InputError(f"{path}:{number}: no string field {field!r} (choose it with --field)")
            yield offset, number, record[field]
    elif kind == ".tsv":
        for offset, number, raw in lines:
            fields = without_newline(decode(path, offset, number, raw)).split("\t")
            if "column" not in header:
                header["column"] = header_column(path, fields, field)
            elif fields != [""]:                         # a blank line is no row, as in csv
                column = header["column"]
                yield offset, number, fields[column] if column < len(fields) else ""
    else:
        yield from csv_records(path, lines, field, header)


def allow_large_csv_fields():
    """The csv module refuses fields over 128 KiB by default; a corpus or labelled file may hold longer texts."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)


def csv_records(path, lines, field, header):
    allow_large_csv_fields()
    reader = csv.reader(decode(path, offset, number, raw) for offset, number, raw in lines)
    while True:
        start, number = lines.position, lines.number + 1         # where the next record begins
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"{path}:{lines.number}: not valid CSV ({e})") from None
        if "column" not in header:
            header["column"] = header_column(path, row, field)
        elif row:                                                 # [] is a blank line
            column = header["column"]
            yield start, number, row[column] if column < len(row) else ""


def header_column(path, names, field):
    if field not in names:
        raise InputError(f"{path}: no column {field!r}; columns are {names} (choose one with --field)")
    return names.index(field)


class TextFile:
    """A corpus file as a sequence of texts: len(), iteration, and [i] or [start:stop] read from the file
    again chunk by chunk, each chunk checked against the hash of the first reading.

    path: the file (stored resolved); field: the JSON field or column (None for .txt); sha256: of every
    byte read; name: what the user gave ("-" for standard input)."""

    def __init__(self, path, field=None, *, name=None, spool=None, chunk=None):
        self.path, self.name, self.spool = Path(path).resolve(), name or str(path), spool
        self.chunk = chunk or CHUNK
        self.field = None if kind_of(path) == ".txt" else field
        self.header = {}                                         # csv/tsv: {"column": index}
        self.cached = (None, None)                               # (chunk number, its texts)
        self.count, self.starts, self.digests, self.end, self.sha256 = self.scan()

    def open(self):
        if self.spool is not None:
            return _Unclosed(self.spool)
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise InputError(f"{self.name}: cannot read ({e.strerror or e})") from None

    def scan(self):
        """Read the whole file once: count, chunk starts [(byte offset, lines before)], chunk digests, the
        end offset, and the sha256 of all its bytes."""
        total, part = hashlib.sha256(), hashlib.sha256()
        starts, digests, count = [(0, 0)], [], 0
        with self.open() as f:
            lines = Lines(f, 0, None, 0)
            records = text_records(self.name, lines, self.field, self.header)
            for offset, number, _ in records:
                for raw in lines.take(offset):
                    total.update(raw)
                    part.update(raw)
                if count and count % self.chunk == 0:            # this text opens a new chunk
                    digests.append(part.hexdigest())
                    part = hashlib.sha256()
                    starts.append((offset, number - 1))
                count += 1
            for raw in lines.take():
                total.update(raw)
                part.update(raw)
            digests.append(part.hexdigest())
            if kind_of(self.path) in (".csv", ".tsv") and "column" not in self.header:
                raise InputError(f"{self.name}: empty file: no header naming a column {self.field!r}")
            return count, starts, digests, lines.position, total.hexdigest()

    def read_chunk(self, c):
        """The texts of chunk c, read again; InputError if its bytes are not those of the first reading."""
        if self.cached[0] == c:
            return self.cached[1]
        start, lines_before = self.starts[c]
        end = self.starts[c + 1][0] if c + 1 < len(self.starts) else self.end
        digest = hashlib.sha256()
        with self.open() as f:
            lines = Lines(f, start, end, lines_before)
            texts = []
            for _, _, text in text_records(self.name, lines, self.field, {} if c == 0 else self.header):
                texts.append(text)
                for raw in lines.take():
                    digest.update(raw)
            for raw in lines.take():
                digest.update(raw)
        if digest.hexdigest() != self.digests[c] or len(texts) != min(self.chunk, self.count - c * self.chunk):
            raise InputError(f"{self.name} changed while it was being read (texts {c * self.chunk} to "
                             f"{min((c + 1) * self.chunk, self.count) - 1} differ from the first reading); "
                             "run again once the file is complete")
        self.cached = (c, texts)
        return texts

    def __len__(self):
        return self.count

    def __iter__(self):
        for c in range(len(self.starts)):
            yield from self.read_chunk(c)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step != 1:
                raise TypeError("TextFile slices take no step")
            texts = []
            for c in range(start // self.chunk, -(-stop // self.chunk) if stop > start else 0):
                first = c * self.chunk
                texts.extend(self.read_chunk(c)[max(start - first, 0):stop - first])
            return texts
        if not -self.count <= index < self.count:
            raise IndexError(f"text {index} of {self.count}")
        index %= self.count
        return self.read_chunk(index // self.chunk)[index % self.chunk]


class _Unclosed:
    """A context manager over an open file that leaves it open (the spooled standard input)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def open_texts(path, field="text"):
    """A TextFile for a path, or for "-" (standard input, copied to a temporary file as it is read)."""
    if path == "-":
        spool = tempfile.TemporaryFile()
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.flush()
        return TextFile("stdin.txt", field, name="-", spool=spool)
    if not Path(path).is_file():
        raise InputError(f"{path}: input file not found")
    return TextFile(path, field)


def read_texts(path, field="text"):
    """Texts from .txt (a line each), .jsonl (a field), .csv/.tsv/.parquet (a column), or '-' for stdin, as a
    list (see this module's docstring for how each format is read)."""
    texts = open_corpus(path, field)
    return texts if isinstance(texts, list) else list(texts)


def open_corpus(path, field="text"):
    """The texts of an input file for extract, streamed: a readers.TextFile (read again chunk by chunk, never
    held whole), or a list for Parquet."""
    if path != "-" and Path(path).suffix.lower() == ".parquet":
        if not Path(path).is_file():
            raise InputError(f"{path}: input file not found")
        return read_parquet_texts(Path(path), field)
    return open_texts(path, field)


def jsonl_records(path, text):
    """(line number, value) for each non-blank line of a JSON Lines text; InputError naming a bad line.
    Lines end at "\n" only: U+2028 and friends are valid inside JSON strings."""
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip(" \t\r"):
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e})") from None


def read_parquet_texts(path, field):
    """A string column of a Parquet file; needs pyarrow (it comes with the `ray` extra)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow "
                         "(or pip install 'minibert-numpy[ray]', which brings it)") from None
    try:
        schema = pq.read_schema(path)
        if field not in schema.names:
            raise InputError(f"{path}: no column {field!r}; columns are {schema.names} (choose one with --field)")
        column = pq.read_table(path, columns=[field]).column(field)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: cannot read as Parquet ({e})") from None
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InputError(f"{path}: column {field!r} holds {column.type}, not strings")
    if column.null_count:
        first = column.is_null().to_pylist().index(True)
        raise InputError(f"{path}: column {field!r} is null in {column.null_count} row(s), the first at row {first}")
    return column.to_pylist()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
