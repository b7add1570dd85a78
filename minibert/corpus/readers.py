"""Files read as their formats define them, as a stream: the one place a file becomes rows, for every command.

    .txt    one text per line; a line ends at "\\n" ("\\r\\n" accepted) and at nothing else: form feeds,
            vertical tabs, U+2028/2029, NEL and the separators \\x1c-\\x1e are characters of the text; a
            blank line is an empty text in its place ("-", standard input, is read as .txt)
    .jsonl  one JSON value per non-blank line, the text in a string field (U+2028 may sit in a string)
    .csv    standard quoting (a quoted field may hold commas, quotes and newlines), fields of any size
    .tsv    fields split at tabs with no quoting at all (GLUE's convention): '"' is an ordinary character
    all     UTF-8 with an optional byte-order mark; invalid UTF-8 is refused naming the line and byte offset
    (any other suffix is read as .txt; .parquet is read whole, one column, through pyarrow: read_parquet_texts)

open_texts(path, field) reads a file once to count its texts, hash its bytes and note where every CHUNK-th
text starts; `texts[start:stop]` then reads just those chunks again and checks that their bytes are the
ones hashed. So the corpus is never held whole in memory, the recorded hash is that of the bytes that were
encoded, and a file rewritten during a run is refused instead of mixed in. open_corpus (any format,
Parquet included) and read_texts (the same, as a list) are what extract, search, embed and similarity
call; read_text_pairs is predict's (the same rows); read_labelled (texts and labels: label_of says what a
label may be) and read_conll are finetune's and probe's; sha256_of fingerprints an input file for manifests.
"""

import csv
import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import InputError

CHUNK = 4096                    # texts per indexed chunk: a re-read costs at most one chunk
BOM = b"\xef\xbb\xbf"
# csv refuses fields over 128 KiB by default; a text of any length is a legitimate field. 2**31 - 1 fits
# the C long the limit is stored in on every platform (sys.maxsize overflows it on Windows).
CSV_FIELD_LIMIT = 2 ** 31 - 1
SURROGATE = re.compile("[\ud800-\udfff]")       # half a UTF-16 pair: no UTF-8 file holds one, a JSON escape can


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


def records(path, lines, header):
    """(offset, line number, record) per record of the lines, for every format: a .txt line (str, every line
    a record, a blank one too), a .jsonl JSON value (blank lines skipped), a .csv/.tsv row as a list of
    fields (blank lines skipped). The csv/tsv header row is not a record: its names go into header["names"]
    (`header` is empty when the lines start at the top of the file, else the one filled then)."""
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
                yield offset, number, json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON ({e})") from None
    elif kind == ".tsv":
        for offset, number, raw in lines:
            fields = without_newline(decode(path, offset, number, raw)).split("\t")
            if "names" not in header:
                header["names"] = fields
            elif fields != [""]:                         # a blank line is no row, as in csv
                yield offset, number, fields
    else:
        yield from csv_records(path, lines, header)


def text_records(path, lines, field, header):
    """(offset, line number, text) per text in the lines: the line (.txt), the string field `field` (.jsonl),
    the column `field` (.csv/.tsv; "" where a row is short of it)."""
    kind = kind_of(path)
    for offset, number, record in records(path, lines, header):
        if kind == ".txt":
            yield offset, number, record
        elif kind == ".jsonl":
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise InputError(f"{path}:{number}: no string field {field!r} (name the field that holds it)")
            if bad := SURROGATE.search(record[field]):         # a JSON escape may spell one ("\\ud800")
                raise InputError(f"{path}:{number}: field {field!r} holds a lone surrogate {bad.group()!r} at "
                                 f"character {bad.start()} (a JSON \\u escape), not valid Unicode: repair it")
            yield offset, number, record[field]
        else:
            [column] = columns_of(path, header, [field])
            yield offset, number, record[column] if column < len(record) else ""


def columns_of(path, header, fields):
    """The indices of `fields` among the csv/tsv header's names (kept in header["columns"])."""
    if "columns" not in header:
        header["columns"] = [header_column(path, header["names"], field) for field in fields]
    return header["columns"]


def csv_records(path, lines, header):
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))   # 128 KiB by default; texts may be longer
    reader, last = csv.reader(decode(path, offset, number, raw) for offset, number, raw in lines), (0, 1 << 62)
    while True:
        start, number = lines.position, lines.number + 1         # where the next record begins
        try:
            row = next(reader)
        except StopIteration:      # a quote never closed makes the rest of the file one field: strict mode says so
            if lines.number > last[1] and lines.f.seek(last[0]) >= 0:
                try:
                    list(csv.reader(lines.f.read(lines.position - last[0]).decode().splitlines(True), strict=True))
                except csv.Error as e:
                    if "end of data" in str(e):
                        raise InputError(f"{path}:{last[1]}: a quote opened in this record is never closed: the rest "
                                         "of the file would be one text; close it (or double it: \"\")") from None
            return
        except csv.Error as e:
            raise InputError(f"{path}:{lines.number}: not valid CSV ({e})") from None
        last = (start, number)
        if "names" not in header:
            header["names"] = row
        elif row:                                                 # [] is a blank line
            yield start, number, row


def header_column(path, names, field):
    if field not in names:
        raise InputError(f"{path}: no column {field!r}; columns are {names} (name one of them)")
    if names.count(field) > 1:                 # which one holds the texts is anyone's guess
        raise InputError(f"{path}: the header names column {field!r} {names.count(field)} times; rename all but one")
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
        self.header = {}                              # csv/tsv: {"names": header row, "columns": [index]}
        self.cached = (None, None)                               # (chunk number, its texts)
        self.count, self.starts, self.digests, self.end, self.sha256 = self.scan()

    def open(self):
        return _Unclosed(self.spool) if self.spool is not None else open_file(self.path, self.name)

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
            if kind_of(self.path) in (".csv", ".tsv"):
                if "names" not in self.header:
                    raise InputError(f"{self.name}: empty file: no header naming a column {self.field!r}")
                columns_of(self.name, self.header, [self.field])         # a header without it: refused
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


def open_file(path, name):
    try:
        return open(path, "rb")
    except OSError as e:
        raise InputError(f"{name}: cannot read ({e.strerror or e})") from None


class _Unclosed:
    """A context manager over an open file that leaves it open (the spooled standard input)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False


def spooled_stdin():
    """Standard input copied to a temporary file as it is read (so it can be read again, like a file)."""
    spool = tempfile.TemporaryFile()
    shutil.copyfileobj(sys.stdin.buffer, spool)
    spool.flush()
    return spool


def check_file(path, what="input file"):
    """A path that is no file refused: a directory said to be one, anything else not found."""
    if Path(path).is_dir():
        raise InputError(f"{path} is a directory, not a{'n' if what[0] in 'aeiou' else ''} {what}; name a file in it")
    if not Path(path).is_file():          # /dev/null, a FIFO: there, but no file to read texts from
        raise InputError(f"{path}: {what} {'is no regular file' if Path(path).exists() else 'not found'}")


def open_texts(path, field="text"):
    """A TextFile for a path, or for "-" (standard input, read as .txt, copied to a temporary file as it is read)."""
    if path == "-":
        return TextFile("stdin.txt", field, name="-", spool=spooled_stdin())
    check_file(path)
    return TextFile(path, field)


def read_lines(path, what="input file"):
    """[(line number, text)] of every line of a file, or of standard input ("-"), read as .txt whatever the
    suffix (rerank's passages: one per line); invalid UTF-8 is refused naming the line and byte."""
    if path == "-":
        name, f = "standard input", spooled_stdin()
    else:
        check_file(path, what)
        name, f = path, open_file(path, path)
    with f:
        lines = Lines(f, 0, None, 0)
        found = []
        for offset, number, raw in lines:
            found.append((number, without_newline(decode(name, offset, number, raw))))
            lines.take()                              # nothing to hash: the lines need not be kept
    return found


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
            raise InputError(f"{path}: no column {field!r}; columns are {schema.names} (name one of them)")
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


def some_texts(texts, path):
    """`texts` unless there are none: an empty input is refused (an empty standard input is a mistake, not
    a request for no output)."""
    if not len(texts):
        where = "standard input" if str(path) == "-" else str(path)
        raise InputError(f"{path}: no texts in {where} (one text per line for .txt and standard input)")
    return texts


def read_text_pairs(path, text_col="text", pair_col=None):
    """(texts, pairs or None) for predict, read as extract reads its input (open_corpus): .txt a line each
    (a blank line is an empty text, so the output keeps one record per input line), .jsonl a string field,
    .csv/.tsv/.parquet a column, "-" standard input as .txt. An input with no texts is refused."""
    texts = list(some_texts(open_corpus(path, text_col), path))
    if pair_col is None:
        return texts, None
    if path == "-" or kind_of(path) == ".txt" and Path(path).suffix.lower() != ".parquet":
        raise InputError(f"{path}: one text per line; sentence pairs (--pair-col) need .csv, .tsv, .jsonl or .parquet")
    return texts, list(open_corpus(path, pair_col))


MISSING = object()        # a field a JSON record or a short csv/tsv row does not have


def read_table(path, fields, what):
    """[(line number, [value per field])] of a .jsonl/.csv/.tsv file, read with the rules of `records`: JSON
    values as parsed (MISSING when absent), csv/tsv fields as strings (MISSING in a short row)."""
    if path == "-" or kind_of(path) == ".txt":
        raise InputError(f"{path}: {what} must be .csv, .tsv or .jsonl (CoNLL token data: .conll, with --task token)")
    if not Path(path).is_file():
        raise InputError(f"{path}: input file not found")
    rows, header = [], {}
    with open_file(path, path) as f:
        for _, number, record in records(str(path), Lines(f, 0, None, 0), header):
            if kind_of(path) == ".jsonl":
                if not isinstance(record, dict):
                    raise InputError(f"{path}:{number}: a JSON object with fields {', '.join(map(repr, fields))} "
                                     f"expected, found {json.dumps(record)[:40]}")
                rows.append((number, [record.get(name, MISSING) for name in fields]))
            else:
                columns = columns_of(path, header, fields)
                rows.append((number, [record[c] if c < len(record) else MISSING for c in columns]))
    if kind_of(path) in (".csv", ".tsv"):
        if "names" not in header:
            raise InputError(f"{path}: empty file: no header naming the columns {', '.join(map(repr, fields))}")
        columns_of(path, header, fields)
    return rows


def label_of(path, number, value, first):
    """A label as the file writes it. A label is a non-blank string, or in JSON Lines an integer (kept as its
    decimal string: 1 is "1"); one file writes all its labels one way, so 1 and "1" are never two classes
    nor silently one. `first` holds (type, line) of the file's first label. Anything else (blank, missing,
    null, 1.0, true, lists) is refused naming the line."""
    if value is MISSING or value is None or isinstance(value, str) and not value.strip():
        said = "missing" if value is MISSING else "null" if value is None else f"blank ({value!r})"
        raise InputError(f"{path}:{number}: the label is {said}; every example needs a label")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{path}:{number}: the label {json.dumps(value)[:40]} is a JSON "
                         f"{type(value).__name__.replace('float', 'number with a fraction or exponent')}; "
                         "a label is a string or an integer (write 1.0 as 1, true as \"true\")")
    kind, line = first.setdefault("label", (type(value), number))
    if kind is not type(value):
        names = {str: "string", int: "integer"}
        raise InputError(f"{path}:{number}: the label {json.dumps(value)} is {'an' if type(value) is int else 'a'} "
                         f"{names[type(value)]}, but the labels before it are {names[kind]}s (the first at line "
                         f"{line}); write every label the same way")
    return str(value)


def read_labelled(path, text_col="text", label_col="label", pair_col=None):
    """(texts, labels), or (texts, pairs, labels) with pair_col, from .csv/.tsv (columns) or .jsonl (fields),
    as finetune and probe read them. Texts follow extract's rules (a JSON text must be a string, a short csv
    row has an empty text); labels follow label_of. A file with no examples is refused."""
    fields = [text_col, label_col] + ([pair_col] if pair_col else [])
    texts, labels, pairs, first = [], [], [], {}
    for number, values in read_table(path, fields, "labelled data"):
        text, label, *pair = ["" if v is MISSING and kind_of(path) != ".jsonl" else v for v in values]
        if not all(isinstance(v, str) for v in [text] + pair):
            raise InputError(f"{path}:{number}: needs a string field {text_col!r}"
                             f"{f' and {pair_col!r}' if pair_col else ''} (choose with --text-col / --pair-col)")
        texts.append(text)
        pairs.extend(pair)
        labels.append(label_of(path, number, values[1], first))
    if not texts:
        raise InputError(f"{path}: no examples")
    return (texts, pairs, labels) if pair_col else (texts, labels)


def read_conll(path):
    """CoNLL token data: one token per line, its label in the last column, a blank line between sentences;
    -DOCSTART- lines are skipped. Columns are split at ASCII spaces and tabs only, so a word may hold a
    no-break space or any other Unicode space ("1\u00a0000"). Lines end at "\n" as in .txt. "-" reads
    standard input. Returns (sentences [list of words], tags [list of labels])."""
    if path != "-" and not Path(path).is_file():
        raise InputError(f"{path}: input file not found")
    sentences, tags, words, labels = [], [], [], []
    source = _Unclosed(spooled_stdin()) if path == "-" else open_file(path, path)
    with source as f:
        for offset, number, raw in Lines(f, 0, None, 0):
            line = without_newline(decode(path, offset, number, raw))
            parts = [part for part in re.split("[ \t]+", line) if part]
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append(words)
                    tags.append(labels)
                    words, labels = [], []
                continue
            if len(parts) < 2:
                raise InputError(f"{path}:{number}: expected a token and a label separated by spaces or a tab, "
                                 f"found {line.strip()!r}")
            words.append(parts[0])
            labels.append(parts[-1])
    if words:
        sentences.append(words)
        tags.append(labels)
    if not sentences:
        raise InputError(f"{path}: no sentences")
    return sentences, tags
