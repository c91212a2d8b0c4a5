"""Input records from JSONL, JSON arrays, CSV and parquet, streamed, each with where it came from.

Every record is bounded before it is decoded: a JSONL line or JSON array element over ``MAX_RECORD_BYTES`` is
``record_too_large``, unkept; a parquet row's sizes are read from the Arrow arrays' offsets before the row becomes
Python objects, and a binary cell over ``max_image_bytes`` (``image_too_large``) or text cells over
``MAX_RECORD_BYTES`` (``record_too_large``) reject the row unconverted.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medverl.data.files import DEFAULT_MAX_IMAGE_BYTES
from medverl.data.job import EXCERPT_CHARS, Reject, excerpt
from medverl.errors import ConfigError

_CHUNK = 1 << 20
# A JSONL line, JSON array element or parquet row's text longer than this is rejected unread (one record is a
# question with a few inline images at most).
MAX_RECORD_BYTES = 64 << 20
# Parquet is read in batches of about this many bytes of cells (a row group's average row size decides the rows).
_BATCH_BYTES = 32 << 20
_MAX_BATCH_ROWS = 256
_JSON_DECODER = json.JSONDecoder()
_ELEMENT_END = re.compile(r"[ \t\r\n]*[,\]]")
_STRUCTURE = re.compile(r'["\[\]{},]')  # what a JSON scanner outside strings looks for
_STRING_SPECIAL = re.compile(r'["\\]')  # what ends a JSON string or escapes its next character
_BOM = b"\xef\xbb\xbf"
_JSON_SPACE = b" \t\r\n"  # a line of only these is blank; any other character makes it a record
# Only a \uD800-\uDFFF escape can put a lone surrogate into decoded JSON: records without one are not walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Record:
    """One input record, or the reason it could not be read.

    Attributes:
        source: ``file:line`` for JSONL, ``file[i]`` for JSON arrays and parquet.
        position: the record's position in its file (the line number for JSONL, from 1; else from 0).
        data: the decoded object (None when `error` is set).
        error: why the record could not be read; "" when it could.
        excerpt: the start of the raw text, for rejects.
        code: the reject code of `error` (malformed_json, bad_encoding, bad_text, record_too_large).
    """

    source: str
    position: int
    data: object = None
    error: str = ""
    excerpt: str = ""
    code: str = "malformed_json"

    def rejected(self, code: str, reason: str) -> Reject:
        """This record as a reject line."""
        return Reject(code, reason, self.position, self.source, self.excerpt or excerpt(_clipped(self.data)))


def _clipped(value: object, depth: int = 8) -> object:
    """`value` cut down for an excerpt: strings and bytes to their first characters, lists and objects to their
    first items, nesting to `depth` levels (a 200 MB image cell must not become a 200 MB excerpt first)."""
    if isinstance(value, str):
        return value[:EXCERPT_CHARS]
    if isinstance(value, bytes | bytearray):
        return repr(bytes(value[:EXCERPT_CHARS]))
    if isinstance(value, dict | list | tuple) and depth <= 0:
        return "..."
    if isinstance(value, dict):
        return {key: _clipped(item, depth - 1) for key, item in itertools.islice(value.items(), EXCERPT_CHARS)}
    if isinstance(value, list | tuple):
        return [_clipped(item, depth - 1) for item in value[:EXCERPT_CHARS]]
    return value


class InputError(ConfigError, ValueError):
    """An input file that cannot be read at all (missing, unknown format, broken JSON array)."""


def count_records(paths: Iterable[str | Path]) -> int | None:
    """How many records `paths` hold (non-blank JSONL lines, parquet rows), or None when a JSON array makes it
    costly to know."""
    total = 0
    for path in map(Path, paths):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            total += _parquet_file(path).metadata.num_rows
        elif suffix in (".jsonl", ".ndjson"):
            with path.open("rb") as f:
                total += sum(1 for line, _, _ in _lines(f, MAX_RECORD_BYTES) if line.strip(_JSON_SPACE))
        else:
            return None
    return total


def iter_records(path: str | Path, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Iterator[Record]:
    """Records of one input file: ``.jsonl``/``.ndjson`` by line, ``.json`` arrays by element, ``.csv`` and
    ``.parquet`` by row (a row with a binary cell over `max_image_bytes` is ``image_too_large``, unconverted)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(path)
    if suffix == ".json":
        return _json_array(path)
    if suffix == ".csv":
        return _csv(path)
    if suffix == ".parquet":
        return _parquet(path, max_image_bytes)
    raise InputError(f"{path}: unknown input format {suffix!r}; use .jsonl, .json (an array), .csv or .parquet")


def iter_jsonl(path: str | Path) -> Iterator[Record]:
    """Records of a JSONL file of any name, or of standard input for ``-``."""
    if str(path) == "-":
        return _jsonl_lines(sys.stdin.buffer, "stdin")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    return _jsonl(path)


def _jsonl(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        yield from _jsonl_lines(f, path.name)


def _lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes, int, bool]]:
    """``(line, byte offset, complete)`` per line; a line over `limit` bytes is given cut, with complete False,
    and the rest of it skipped without being held in memory."""
    offset = 0
    while raw := f.readline(limit + 1):
        start = offset
        offset += len(raw)
        if len(raw) > limit and not raw.endswith(b"\n"):
            while (more := f.readline(_CHUNK)) and not more.endswith(b"\n"):
                offset += len(more)
            offset += len(more)
            yield raw[:EXCERPT_CHARS], start, False
        else:
            yield raw, start, True


def _jsonl_lines(f: IO[bytes], name: str, limit: int = MAX_RECORD_BYTES) -> Iterator[Record]:
    for number, (raw, offset, complete) in enumerate(_lines(f, limit), start=1):
        if number == 1 and raw.startswith(_BOM):
            raw, offset = raw[len(_BOM):], len(_BOM)
        source = f"{name}:{number}"
        if not complete:
            yield Record(source, number, error=f"line {number} is longer than {limit} bytes", code="record_too_large",
                         excerpt=raw.decode("utf-8", errors="replace"))
            continue
        if not raw.strip(_JSON_SPACE):
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Record(source, number, code="bad_encoding",
                         error=f"invalid UTF-8 at line {number}, byte {offset + exc.start} of the file "
                         f"({exc.reason}); re-encode the file as UTF-8",
                         excerpt=raw.decode("utf-8", errors="replace")[:EXCERPT_CHARS])
            continue
        yield decoded(source, number, line)


def decoded(source: str, position: int, text: str) -> Record:
    """The record of one JSON text, or the reason it is not one (malformed, too deep, a lone surrogate)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Record(source, position, error=f"malformed JSON: {exc.msg} at column {exc.colno}",
                      excerpt=text[:EXCERPT_CHARS])
    except (ValueError, RecursionError) as exc:  # an integer of too many digits, nesting deeper than the stack
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return Record(source, position, error=f"malformed JSON: {what}", excerpt=text[:EXCERPT_CHARS])
    return checked(Record(source, position, data), text)


def checked(record: Record, text: str | None = None) -> Record:
    """`record`, or a ``bad_text`` error when a string in it (key or value) holds a lone surrogate, which no
    UTF-8 writer can store. With `text`, the JSON it was decoded from, records without a surrogate escape are
    not walked."""
    if text is not None and not _SURROGATE_ESCAPE.search(text):
        return record
    where = _surrogate(record.data, "")
    if where is None:
        return record
    return Record(record.source, record.position, code="bad_text",
                  error=f"a lone surrogate (invalid Unicode) in {where or 'the record'}; fix the text at its source",
                  excerpt=(text or "")[:EXCERPT_CHARS])


def _surrogate(value: object, path: str) -> str | None:
    """Where in `value` a string holds a lone surrogate ("" for `value` itself), or None. Iterative: a record
    nested deeper than the interpreter's stack is walked all the same."""
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return f"{path}.{key!a}" if path else repr(key)
                stack.append((item, f"{path}.{key}" if path else str(key)))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return None


class _ArrayScanner:
    """The elements of a top-level JSON array as JSON texts, found by tracking strings and brackets over 1 MB
    chunks; an element longer than `limit` characters is skipped without being kept."""

    def __init__(self, f: IO[str], path: Path, limit: int) -> None:
        self.f, self.path, self.limit = f, path, limit
        self.chunk, self.pos, self.index = "", 0, 0

    def _read(self) -> bool:
        try:
            self.chunk, self.pos = self.f.read(_CHUNK), 0
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.path}: invalid UTF-8 ({exc.reason}) after element {self.index}; re-encode the "
                             "file as UTF-8, or convert it to JSONL to reject only the lines that hold bad bytes"
                             ) from None
        return bool(self.chunk)

    def next_char(self) -> str:
        """The next character that is not JSON whitespace ("" at the end of the file), left unconsumed."""
        while True:
            while self.pos < len(self.chunk) and self.chunk[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.chunk) or not self._read():
                return self.chunk[self.pos : self.pos + 1]

    def element(self) -> tuple[str | None, str]:
        """The next element's JSON text (None when over the limit) and its first characters: the text up to the
        ``,`` or ``]`` that ends it, outside strings and brackets."""
        parts: list[str] | None = []
        head, size, depth, in_string, escape = "", 0, 0, False, False
        while True:
            chunk, start, end = self.chunk, self.pos, None
            pos = start
            while pos < len(chunk) and end is None:
                if escape:
                    pos, escape = pos + 1, False
                    continue
                match = (_STRING_SPECIAL if in_string else _STRUCTURE).search(chunk, pos)
                if match is None:
                    pos = len(chunk)
                    break
                char, pos = match.group(), match.end()
                if in_string:
                    escape = char == "\\"  # the escaped character, maybe in the next chunk, is skipped
                    in_string = escape
                elif char == '"':
                    in_string = True
                elif char in "[{":
                    depth += 1
                elif depth:
                    depth -= char in "]}"  # a "," inside brackets leaves it as it is
                else:  # a "," or the array's "]": the end of the element
                    end = match.start()
            piece = chunk[start : pos if end is None else end]
            head, size = head or piece[:EXCERPT_CHARS], size + len(piece)
            if parts is not None and size <= self.limit:
                parts.append(piece)
            else:
                parts = None
            if end is not None:
                self.pos = end
            if end is not None or not self._read():
                return (None if parts is None else "".join(parts)), head

    def _in_chunk(self) -> tuple[object, str] | None:
        """The next element and its text when it ends inside the current chunk (most do), decoded at C speed."""
        try:
            value, end = _JSON_DECODER.raw_decode(self.chunk, self.pos)
        except (ValueError, RecursionError):  # cut at the chunk's end, or broken: the scanner finds out which
            return None
        # Not followed by "," or "]" in this chunk: a number may go on in the next one ("1." then "5"), or the array
        # is broken; past the limit: the scanner rejects it. Either way the scanner decides.
        if end - self.pos > self.limit or not _ELEMENT_END.match(self.chunk, end):
            return None
        text, self.pos = self.chunk[self.pos : end], end
        return value, text

    def records(self) -> Iterator[Record]:
        if self.next_char() != "[":
            raise InputError(f"{self.path}: a .json input must be one JSON array of records")
        self.pos += 1
        if self.next_char() == "]":
            return
        while True:
            self.next_char()
            source = f"{self.path.name}[{self.index}]"
            if decoded := self._in_chunk():
                yield checked(Record(source, self.index, decoded[0]), decoded[1])
            elif (found := self.element())[0] is None:
                yield Record(source, self.index, error=f"element {self.index} is longer than {self.limit} characters",
                             code="record_too_large", excerpt=found[1])
            else:
                yield checked(Record(source, self.index, self._decoded(found[0])), found[0])
            self.index += 1
            char = self.next_char()
            if char == "]":
                return
            if char != ",":
                raise InputError(f"{self.path}: broken JSON array after element {self.index - 1}: expected ',' or ']'")
            self.pos += 1

    def _decoded(self, text: str) -> object:
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, too deep
            raise InputError(
                f"{self.path}: broken JSON array at element {self.index}: {getattr(exc, 'msg', exc)}; records after it "
                "cannot be located (convert the file to JSONL to isolate bad records)"
            ) from None


def _json_array(path: Path) -> Iterator[Record]:
    """Elements of a top-level JSON array, decoded one at a time."""
    with path.open("r", encoding="utf-8-sig") as f:
        yield from _ArrayScanner(f, path, MAX_RECORD_BYTES).records()


def _parquet(path: Path, max_image_bytes: int) -> Iterator[Record]:
    """Rows of a parquet file in batches of about ``_BATCH_BYTES``; a row whose cells are over the bounds is a
    record with its error, never converted to Python objects."""
    file = _parquet_file(path)
    index = 0
    try:
        for group in range(file.num_row_groups):
            meta = file.metadata.row_group(group)
            rows = _BATCH_BYTES * meta.num_rows // max(meta.total_byte_size, 1)
            for batch in file.iter_batches(batch_size=max(1, min(_MAX_BATCH_ROWS, rows)), row_groups=[group],
                                           use_threads=False):
                for record in _batch_records(batch, path.name, index, max_image_bytes):
                    yield record
                    index += 1
    except MemoryError as exc:  # Arrow holds a batch's cells once (a page, its decompressed copy, the array)
        raise InputError(f"{path}: row {index} or the rows after it do not fit in memory ({exc}): a cell of hundreds "
                         "of MB; drop the row or give the job more memory") from None
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a corrupt page, a string that is not UTF-8
        raise InputError(f"{path}: unreadable parquet after row {index}: {exc}") from None


def _batch_records(batch: pa.RecordBatch, name: str, first: int, max_image_bytes: int) -> Iterator[Record]:
    sizes = {column: _cell_sizes(batch.column(column)) for column in batch.schema.names}
    text = sum((t for _, t in sizes.values()), np.zeros(batch.num_rows, dtype=np.int64))
    problems = [_oversized(sizes, text, row, max_image_bytes) for row in range(batch.num_rows)]
    whole = None if any(problems) else batch.to_pylist()  # else each row that is within the bounds on its own
    for row, problem in enumerate(problems):
        source = f"{name}[{first + row}]"
        if problem:
            code, error, where = problem
            yield Record(source, first + row, error=error, code=code, excerpt=where)
        else:
            data = whole[row] if whole else batch.slice(row, 1).to_pylist()[0]
            yield checked(Record(source, first + row, data))


def _oversized(sizes: dict[str, tuple[np.ndarray, np.ndarray]], text: np.ndarray, row: int,
               max_image_bytes: int) -> tuple[str, str, str] | None:
    """``(code, reason, excerpt)`` when a row's cells are over the bounds, else None."""
    for column, (binary, _) in sizes.items():
        if binary[row] > max_image_bytes:
            return ("image_too_large", f"column {column!r} holds {binary[row]} bytes of binary data (an image), over "
                    f"--max-image-bytes {max_image_bytes}", f"{column}: {binary[row]} bytes")
    if text[row] > MAX_RECORD_BYTES:
        column = max(sizes, key=lambda c: sizes[c][1][row])
        most = sizes[column][1][row]
        return ("record_too_large", f"the row's text cells hold {text[row]} bytes ({most} in column {column!r}), over "
                f"the {MAX_RECORD_BYTES} bytes of a record", f"{column}: {most} bytes")
    return None


def _cell_sizes(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `array`: the largest binary value and the total bytes of text in its cell, nested values included,
    from the arrays' offsets (nothing is copied)."""
    n, kind = len(array), array.type
    if pa.types.is_dictionary(kind):
        binary, text = _cell_sizes(array.dictionary)
        if not len(binary):
            return np.zeros(n, np.int64), np.zeros(n, np.int64)
        indices = pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False)
        return _valid(array, binary[indices]), _valid(array, text[indices])
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    is_view = pa.types.is_string_view(kind) or pa.types.is_binary_view(kind)
    if is_text or is_view or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) \
            or pa.types.is_fixed_size_binary(kind):
        if is_view:  # 16-byte views, each led by its value's length
            views = np.frombuffer(array.buffers()[1], dtype="<i4").reshape(-1, 4)
            lengths = _valid(array, views[array.offset : array.offset + n, 0].astype(np.int64))
        else:
            lengths = pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return (np.zeros(n, np.int64), lengths) if is_text else (lengths, np.zeros(n, np.int64))
    if pa.types.is_struct(kind):
        children = [_cell_sizes(array.field(i)) for i in range(kind.num_fields)]
        binary = np.max([b for b, _ in children], axis=0, initial=0) if children else np.zeros(n, np.int64)
        text = np.sum([t for _, t in children], axis=0, dtype=np.int64) if children else np.zeros(n, np.int64)
        return _valid(array, binary), _valid(array, text)
    ranges = _value_ranges(array)
    if ranges is None:  # numbers, booleans, dates: a few bytes a cell
        return np.zeros(n, np.int64), np.zeros(n, np.int64)
    starts, ends = ranges
    child_binary, child_text = _cell_sizes(array.values)
    total = np.concatenate([[0], np.cumsum(child_text)])
    # reduceat over (start, end) pairs: its even results are the maxima of values[start:end]
    pairs = np.column_stack([starts, ends]).ravel()
    binary = np.maximum.reduceat(np.append(child_binary, 0), pairs)[::2] if n else np.zeros(0, np.int64)
    return _valid(array, np.where(ends > starts, binary, 0)), _valid(array, total[ends] - total[starts])


def _value_ranges(array: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """Where each row's values lie in ``array.values`` (start, end), for the list types; else None."""
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets = array.offsets.to_numpy().astype(np.int64)
        return offsets[:-1], offsets[1:]
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):  # rows may share or reorder values
        offsets = array.offsets.to_numpy().astype(np.int64)
        return offsets, offsets + array.sizes.to_numpy().astype(np.int64)
    if pa.types.is_fixed_size_list(kind):
        starts = (array.offset + np.arange(len(array), dtype=np.int64)) * kind.list_size
        return starts, starts + kind.list_size
    return None


def _valid(array: pa.Array, sizes: np.ndarray) -> np.ndarray:
    """`sizes` with null cells (never converted) at 0."""
    if array.null_count:
        sizes = np.where(array.is_valid().to_numpy(zero_copy_only=False), sizes, 0)
    return sizes


def _csv(path: Path) -> Iterator[Record]:
    """Rows of a CSV file with a header line, as {column: text}, each placed by the line it starts on; a row
    that is not UTF-8, holds a field over the csv module's limit or has more cells than the header is rejected."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        while True:
            line = reader.line_num + 1
            source = f"{path.name}:{line}"
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a field over csv.field_size_limit(), read no further than the limit
                yield Record(source, line, error=f"line {line}: {exc}", code="record_too_large")
                continue
            if any(_SURROGATE.search(cell) for cell in cells):
                yield Record(source, line, code="bad_encoding", error=f"invalid UTF-8 in the row at line {line}; "
                             "re-encode the file as UTF-8", excerpt=",".join(cells).encode(
                                 "utf-8", "surrogateescape").decode("utf-8", "replace")[:EXCERPT_CHARS])
            elif len(cells) > len(header):
                yield Record(source, line, code="bad_field", error=f"line {line} has {len(cells)} cells for "
                             f"{len(header)} columns", excerpt=",".join(cells)[:EXCERPT_CHARS])
            elif cells:
                yield Record(source, line, dict(itertools.zip_longest(header, cells, fillvalue="")))


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, buffer_size=_CHUNK, pre_buffer=False)  # column chunks streamed, not read whole
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable parquet file: {exc}") from None


def json_object(record: Record, required: Sequence[str] = ()) -> dict | Reject:
    """The record's JSON object, or the reject saying why it is not an object with the `required` fields."""
    if record.error:
        return record.rejected(record.code, record.error)
    if not isinstance(record.data, dict):
        return record.rejected("not_an_object", f"a record must be a JSON object, got {type(record.data).__name__}")
    missing = [name for name in required if name not in record.data]
    if missing:
        return record.rejected("missing_field", f"missing field(s) {', '.join(missing)}; the record has "
                               f"{', '.join(sorted(record.data)) or 'no keys'}")
    return record.data
