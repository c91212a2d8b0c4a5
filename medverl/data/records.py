"""Input records from JSONL, JSON arrays and parquet, streamed, each with where it came from."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from medverl.data.job import EXCERPT_CHARS, Reject, excerpt
from medverl.errors import ConfigError

_CHUNK = 1 << 20
# A JSONL line longer than this is rejected unread (one record is a question with a few inline images at most).
MAX_RECORD_BYTES = 64 << 20
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
        return Reject(code, reason, self.position, self.source, self.excerpt or excerpt(self.data))


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


def iter_records(path: str | Path) -> Iterator[Record]:
    """Records of one input file: ``.jsonl``/``.ndjson`` by line, ``.json`` arrays by element, ``.parquet`` by row."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(path)
    if suffix == ".json":
        return _json_array(path)
    if suffix == ".parquet":
        return _parquet(path)
    raise InputError(f"{path}: unknown input format {suffix!r}; use .jsonl, .json (an array) or .parquet")


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


def _json_array(path: Path) -> Iterator[Record]:
    """Elements of a top-level JSON array, decoded one at a time from 1 MB chunks."""
    decoder = json.JSONDecoder()
    with path.open("r", encoding="utf-8-sig") as f:
        buffer, offset, index, eof = "", 0, 0, False

        def fill() -> bool:
            nonlocal buffer, offset, eof
            try:
                chunk = f.read(_CHUNK)
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}: invalid UTF-8 ({exc.reason}) after element {index}; re-encode the file "
                                 "as UTF-8, or convert it to JSONL to reject only the lines that hold bad bytes") from None
            if not chunk:
                eof = True
                return False
            buffer = buffer[offset:] + chunk
            offset = 0
            return True

        def skip_space() -> None:
            nonlocal offset
            while True:
                while offset < len(buffer) and buffer[offset] in " \t\r\n":
                    offset += 1
                if offset < len(buffer) or not fill():
                    return

        fill()
        skip_space()
        if offset >= len(buffer) or buffer[offset] != "[":
            raise InputError(f"{path}: a .json input must be one JSON array of records")
        offset += 1
        while True:
            skip_space()
            if offset < len(buffer) and buffer[offset] == "]":
                return
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, offset)
                    if end < len(buffer) or eof or not fill():  # a number may continue in the next chunk
                        break
                    continue
                except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, too deep
                    if isinstance(exc, json.JSONDecodeError) and not eof and fill():
                        continue
                    raise InputError(
                        f"{path}: broken JSON array at element {index}: {getattr(exc, 'msg', exc)}; records after it "
                        "cannot be located (convert the file to JSONL to isolate bad records)"
                    ) from None
            yield checked(Record(f"{path.name}[{index}]", index, value))
            index += 1
            offset = end
            skip_space()
            if offset < len(buffer) and buffer[offset] == ",":
                offset += 1
            elif offset < len(buffer) and buffer[offset] == "]":
                return
            else:
                raise InputError(f"{path}: broken JSON array after element {index - 1}: expected ',' or ']'")


def _parquet(path: Path) -> Iterator[Record]:
    index = 0
    try:
        for batch in _parquet_file(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield checked(Record(f"{path.name}[{index}]", index, row))
                index += 1
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a corrupt page, a string that is not UTF-8
        raise InputError(f"{path}: unreadable parquet after row {index}: {exc}") from None


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
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
