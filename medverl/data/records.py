"""Input records from JSONL, JSON arrays and parquet, streamed, each with where it came from."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq

from medverl.data.job import EXCERPT_CHARS, Rejected, excerpt
from medverl.errors import ConfigError

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Record:
    """One input record, or the reason it could not be read.

    Attributes:
        source: ``file:line`` for JSONL, ``file[i]`` for JSON arrays and parquet.
        position: the record's position in its file (the line number for JSONL, from 1; else from 0).
        data: the decoded object (None when `error` is set).
        error: why the record could not be read; "" when it could.
        excerpt: the start of the raw text, for rejects.
    """

    source: str
    position: int
    data: object = None
    error: str = ""
    excerpt: str = ""

    def rejected(self, code: str, reason: str) -> Rejected:
        """This record as a reject line."""
        return Rejected(self.position, self.source, code, reason, self.excerpt or excerpt(self.data))


class InputError(ConfigError, ValueError):
    """An input file that cannot be read at all (missing, unknown format, broken JSON array)."""


def count_records(paths: Iterable[str | Path]) -> int | None:
    """How many records `paths` hold (non-blank JSONL lines, parquet rows), or None when a JSON array makes it
    costly to know."""
    total = 0
    for path in map(Path, paths):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            total += pq.ParquetFile(path).metadata.num_rows
        elif suffix in (".jsonl", ".ndjson"):
            with path.open("rb") as f:
                total += sum(1 for line in f if line.strip())
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


def _jsonl_lines(f: IO[bytes], name: str) -> Iterator[Record]:
    for number, raw in enumerate(f, start=1):
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        source = f"{name}:{number}"
        try:
            yield Record(source, number, json.loads(line))
        except json.JSONDecodeError as exc:
            yield Record(source, number, error=f"malformed JSON line: {exc.msg} at column {exc.colno}",
                         excerpt=line[:EXCERPT_CHARS])


def _json_array(path: Path) -> Iterator[Record]:
    """Elements of a top-level JSON array, decoded one at a time from 1 MB chunks."""
    decoder = json.JSONDecoder()
    with path.open("r", encoding="utf-8", errors="replace") as f:
        buffer, offset, index, eof = "", 0, 0, False

        def fill() -> bool:
            nonlocal buffer, offset, eof
            chunk = f.read(_CHUNK)
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
                except json.JSONDecodeError as exc:
                    if eof or not fill():
                        raise InputError(
                            f"{path}: broken JSON array at element {index}: {exc.msg}; records after it "
                            "cannot be located (convert the file to JSONL to isolate bad records)"
                        ) from None
            yield Record(f"{path.name}[{index}]", index, value)
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
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield Record(f"{path.name}[{index}]", index, row)
            index += 1


def json_object(record: Record, required: Sequence[str] = ()) -> dict | Rejected:
    """The record's JSON object, or the reject saying why it is not an object with the `required` fields."""
    if record.error:
        return record.rejected("malformed_json", record.error)
    if not isinstance(record.data, dict):
        return record.rejected("not_an_object", f"a record must be a JSON object, got {type(record.data).__name__}")
    missing = [name for name in required if name not in record.data]
    if missing:
        return record.rejected("missing_field", f"missing field(s) {', '.join(missing)}; the record has "
                               f"{', '.join(sorted(record.data)) or 'no keys'}")
    return record.data
