"""Hostile input, round 2: the judge's replies and cache, what reaches reports and terminals, numeric options, damaged
shards on resume, two jobs on one directory, and a full disk.

Commands run as subprocesses through :func:`test_hostile.medverl` (2 GiB of address space, no traceback allowed);
each case's peak memory is printed (``pytest -s``). The disk-full cases limit the file size of the subprocess
(RLIMIT_FSIZE: writes past it fail with EFBIG) or, in process, make a write fail with ENOSPC.
"""

from __future__ import annotations

import csv
import errno
import gzip
import json
import os
import re
import resource
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from loopback import Endpoint, chat_reply, serve
from PIL import Image
from test_hostile import _RUNNER, ADDRESS_SPACE, TIMEOUT_S, Result, medverl

from medverl.cli import main
from medverl.data.job import LOCK, Job

ANSWER = "<think>looking</think><answer>{}</answer>"


def _run(name: str, *args: object, fsize: int | None = None) -> Result:
    """:func:`medverl`, printing the case's peak memory; with `fsize`, files cannot grow past that many bytes."""
    if fsize is None:
        result = medverl(name, *args)
    else:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        proc = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, args)], capture_output=True, text=True,
                              timeout=TIMEOUT_S, preexec_fn=limit, errors="replace")
        peak = [int(line.split("=")[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")]
        assert peak and 0 < peak[-1] < ADDRESS_SPACE // 1024, f"{name}: peak {peak} KiB\n{proc.stderr[-2000:]}"
        result = Result(proc.returncode, proc.stdout, proc.stderr, peak[-1])
    print(f"\nPEAK {name}: {result.peak_kb / 1024:.0f} MiB (exit {result.rc})")
    assert "Traceback" not in result.err, result.err[-3000:]
    return result


def _manifest(directory: Path) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["read"] == manifest["written"] + manifest["rejected"], manifest
    return manifest


def _png(path: Path, seed: int = 0, size: int = 64) -> Path:
    """A PNG of a fixed pattern (`seed` >= 0) or of noise (`seed` < 0)."""
    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3) if seed < 0 else
                            bytes((i * 7 + seed) % 256 for i in range(size * size * 3)))
    image.save(path)
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- 3. the judge ------------------------------------------------------------------------------------------------


def _gzip_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(1 << 20)
    return b"".join(packer.compress(zeros) for _ in range(size >> 20)) + packer.flush()


GOOD = chat_reply(json.dumps({"correct": True, "rationale": "same"}))
BOMB = _gzip_zeros(256 << 20)  # 0.25 MB that inflates to 256 MB
assert len(BOMB) < 1 << 20  # under the reply cap as sent: only the inflated size is over it
DEFLATE_BOMB = b"\x78\xda" + BOMB[10:-8]  # the same deflate data in a zlib wrapper (its checksum is never reached)
# word in the model's answer -> (Content-Encoding, body)
REPLIES: dict[str, tuple[str, bytes]] = {
    "SURROGATE": ("", chat_reply(json.dumps({"correct": True, "rationale": "\ud800 lone"}))),
    "SURROGATEKEY": ("", chat_reply(json.dumps({"correct": False, "\udc00": 1}))),
    "SURROGATERAW": ("", b'{"choices": [{"message": {"content": '
                         b'"{\\"correct\\": true, \\"rationale\\": \\"\\\\udfff\\"}"}}]}'),
    "EMOJI": ("", chat_reply(json.dumps({"correct": True, "rationale": "\U0001f600 fine"}))),  # a valid pair
    "GZIPGOOD": ("gzip", gzip.compress(GOOD)),
    "DEFLATEGOOD": ("deflate", zlib.compress(GOOD)),
    "GZIPBOMB": ("gzip", BOMB),
    "GZIPTWICE": ("gzip, gzip", gzip.compress(BOMB)),
    "DEFLATEBOMB": ("deflate", DEFLATE_BOMB),
    "BROTLI": ("br", b"\x1b\x03\x00\xf8\xa5\x00"),
    "GZIPBROKEN": ("gzip", b"\x1f\x8b\x08\x00garbage" * 10),
    "GOOD": ("", GOOD),
}


class _Judge(Endpoint):
    """Answers by a word in the model's answer; ``listing`` is the body of ``GET /v1/models``."""

    protocol_version = "HTTP/1.0"
    models = ("judge",)
    listing: bytes | None = None

    def do_GET(self) -> None:
        if type(self).listing is not None and self.path == "/v1/models":
            return self.send(200, type(self).listing)
        return super().do_GET()

    def answer(self, text: str) -> None:
        answer = text.split("Model's answer: ")[-1]
        encoding, body = REPLIES[max((w for w in REPLIES if w in answer), key=len, default="GOOD")]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client stopped reading at its cap
            pass


@pytest.fixture
def judge_url():
    _Judge.listing = None
    with serve(_Judge) as url:
        yield url


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Prepared RL data of open questions (the judge decides them), indexes 0..N-1."""
    base = tmp_path_factory.mktemp("bench")
    questions = [{"question": f"Where is finding {i}?", "answer": "right upper lobe", "query_type": "jaccard",
                  "data_source": "vqa_rad"} for i in range(len(REPLIES))]
    source = _jsonl(base / "q.jsonl", questions)
    assert main(["prep", "rl", str(source), "--output", str(base / "data")]) == 0
    return base / "data"


def _predictions(path: Path, words: list[str]) -> Path:
    return _jsonl(path, [{"data_source": "vqa_rad", "index": i, "response": ANSWER.format(f"lobe {w}")}
                         for i, w in enumerate(words)])


def _eval_score(name: str, bench: Path, predictions: Path, out: Path, url: str, *extra: object,
                fsize: int | None = None) -> Result:
    return _run(name, "eval", "score", "--data", bench, "--run", f"m={predictions}", "--output", out,
                "--judge-url", url, "--judge-model", "judge", "--judge-retries", "0", "--judge-timeout", "10", *extra,
                fsize=fsize)


def _samples(out: Path, words: list[str]) -> dict[str, dict]:
    """Each prediction's sample by the word of :func:`_predictions`."""
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    return {words[r["index"]]: r for r in rows if r["index"] < len(words)}


@pytest.mark.parametrize("words", [
    ["SURROGATE", "SURROGATEKEY", "SURROGATERAW", "EMOJI", "GOOD"],  # lone surrogates fail the call, pairs do not
    ["GZIPGOOD", "DEFLATEGOOD", "GZIPBROKEN", "BROTLI", "GOOD"],  # the codings asked for decode; others fail
    ["GZIPBOMB", "GOOD"],  # 256 MB once inflated: cut at the 1 MB cap
    ["GZIPTWICE", "GOOD"],  # gzip of a gzip bomb: one coding is read, two are refused
    ["DEFLATEBOMB", "GOOD"],
], ids=["surrogates", "codings", "gzip-bomb", "gzip-twice", "deflate-bomb"])
def test_judge_replies_fail_alone(bench: Path, tmp_path: Path, judge_url: str, words: list[str], request) -> None:
    out = tmp_path / "scores"
    result = _eval_score(f"judge {request.node.callspec.id}", bench, _predictions(tmp_path / "p.jsonl", words), out,
                         judge_url)
    failing = [w for w in words if w not in ("EMOJI", "GZIPGOOD", "DEFLATEGOOD", "GOOD")]
    assert result.rc == 1 and f"{len(failing)} judge call(s) failed" in result.err, result.err[-2000:]
    samples = _samples(out, words)
    assert {w for w, s in samples.items() if s["judge"] == "failed"} == set(failing), samples
    assert all(samples[w]["judge"] == "correct" for w in words if w not in failing)
    reasons = {w: samples[w]["reason"] for w in failing}
    for word, says in {"SURROGATE": "lone surrogate", "GZIPBOMB": "once decompressed",
                       "GZIPTWICE": "more than once", "DEFLATEBOMB": "once decompressed", "BROTLI": "'br'",
                       "GZIPBROKEN": "does not decompress"}.items():
        if word in reasons:
            assert says in reasons[word], reasons
    assert result.peak_kb < 256 << 10  # no reply is held inflated (a bomb inflates to 256 MiB)
    cached = sqlite3.connect(out / "judge_cache.sqlite").execute("SELECT verdict FROM verdicts").fetchall()
    assert len(cached) == len(words) - len(failing)  # only valid verdicts are cached
    (out / "samples.jsonl").read_text(encoding="utf-8")  # valid UTF-8
    _manifest(out)


@pytest.mark.parametrize("listing", [b'{"data": 5}', b'{"data": "judge"}', b'{"data": {"id": "judge"}}',
                                     b'{"data": null}', b"[1, 2]", b"null", b'"judge"', b'{"object": "list"}'])
def test_judge_preflight_model_listings(bench: Path, tmp_path: Path, judge_url: str, listing: bytes) -> None:
    _Judge.listing = listing
    result = _eval_score(f"preflight {listing.decode()}", bench, _predictions(tmp_path / "p.jsonl", ["GOOD"]),
                         tmp_path / "s", judge_url)
    assert result.rc == 2 and "not OpenAI-compatible" in result.err, result.err[-2000:]
    assert not _Judge.calls


def _cache(path: Path, entries: int = 0) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT)")
    db.executemany("INSERT INTO verdicts VALUES (?, ?)", ((f"filler{i}", "x" * 100) for i in range(entries)))
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize("kind", ["corrupt", "directory", "locked", "symlink-loop", "fifo"])
def test_unusable_judge_caches_are_usage_errors(bench: Path, tmp_path: Path, judge_url: str, kind: str) -> None:
    cache = tmp_path / "cache.sqlite"
    holder = None
    if kind == "corrupt":
        cache.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    elif kind == "directory":
        cache.mkdir()
    elif kind == "locked":  # another process is in the middle of writing it
        holder = sqlite3.connect(_cache(cache), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    elif kind == "symlink-loop":
        cache.symlink_to(cache)
    else:
        os.mkfifo(cache)
    try:
        result = _eval_score(f"cache {kind}", bench, _predictions(tmp_path / "p.jsonl", ["GOOD"]), tmp_path / "s",
                             judge_url, "--judge-cache", cache)
    finally:
        if holder is not None:
            holder.close()
    assert result.rc == 2 and f"the judge cache {cache} cannot be used" in result.err, result.err[-2000:]
    assert not _Judge.calls  # nothing paid for before the error


def test_a_cache_that_takes_no_writes_keeps_the_verdicts(bench: Path, tmp_path: Path, judge_url: str) -> None:
    """A read-only cache: (chmod is no bar to root, so) the file is also past the file size limit, which fails
    every write into it while reads go on."""
    cache = _cache(tmp_path / "shared.sqlite", entries=2000)
    assert cache.stat().st_size > 200_000
    cache.chmod(0o444)
    words = ["GOOD", "EMOJI", "GZIPGOOD"]
    predictions = _predictions(tmp_path / "p.jsonl", words)
    out = tmp_path / "s"
    # two runs of the same predictions: each question is asked once, the second answered from memory
    result = _run("cache read-only", "eval", "score", "--data", bench, "--run", f"a={predictions}", "--run",
                  f"b={predictions}", "--output", out, "--judge-url", judge_url, "--judge-model", "judge",
                  "--judge-cache", cache, fsize=150_000)
    assert result.rc == 0, result.err[-2000:]
    assert len(_Judge.calls) == len(words)
    unsaved = out / "judge_cache.unsaved.sqlite"
    assert f"{len(words)} judge verdict(s) could not be written to {cache}" in result.err
    assert f"they are in {unsaved}" in result.err
    assert sqlite3.connect(cache).execute("SELECT count(*) FROM verdicts").fetchone()[0] == 2000
    assert sqlite3.connect(unsaved).execute("SELECT count(*) FROM verdicts").fetchone()[0] == len(words)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["a"]["vqa_rad"]["judged"] == metrics["b"]["vqa_rad"]["judged"] == len(words)
    _Judge.calls.clear()  # the verdicts paid for are reused from where they were put
    again = _run("cache reuse unsaved", "eval", "score", "--data", bench, "--run", f"a={predictions}", "--output",
                 tmp_path / "s2", "--judge-url", judge_url, "--judge-model", "judge", "--judge-cache", unsaved)
    assert again.rc == 0 and not _Judge.calls


class _ReadOnly:
    """A cache connection whose writes fail as a read-only database's do."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql.startswith("INSERT"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_verdicts_nowhere_to_store_stay_in_memory(tmp_path: Path) -> None:
    from medverl.http import VerdictCache

    cache = VerdictCache(_cache(tmp_path / "c.sqlite"), json.loads, fallback=tmp_path / "missing" / "spare.sqlite")
    cache._db = _ReadOnly(cache._db)
    cache.put("k", {"correct": True})
    cache.put("k2", {"correct": False})
    assert cache.get("k") == {"correct": True} and cache.get("k2") == {"correct": False}
    assert cache.unsaved() == (f"2 judge verdict(s) could not be written to {tmp_path / 'c.sqlite'} (attempt to write "
                               "a readonly database); they were kept only for this run (its output holds them)")
    cache.close()


# --- 4. reports and terminals ------------------------------------------------------------------------------------


HOSTILE_NAMES = ["evil\x1b[2J\x1b]0;owned\x07", "a|b|c", "two\nlines", "`code`", "<script>alert(1)</script>",
                 "[link](http://x)", "rtl\u202eexe.txt", "back\\|slash", "nul\x00byte", "\x9b31m c1"]


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def _safe(text: str) -> None:
    """No control character but newlines, no raw HTML, and every table line has its header's column count."""
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in text), repr(text)
    assert "<script>" not in text and not re.search(r"(?<!\\)\]\(http", text)  # no raw HTML, no live link
    for block in text.split("\n\n"):
        lines = _table_lines(block)
        if lines:
            columns = {line.replace("\\|", "").count("|") for line in lines}
            assert len(columns) == 1, lines


def test_score_escapes_data_sources(tmp_path: Path) -> None:
    rows = [{"solution_str": "<answer>yes</answer>", "ground_truth": "yes", "query_type": "yes_no", "data_source": n}
            for n in HOSTILE_NAMES]
    out = tmp_path / "scored"
    result = _run("score hostile names", "score", "--input", _jsonl(tmp_path / "p.jsonl", rows), "--output", out)
    assert result.rc == 0
    for text in (result.out, (out / "report.md").read_text(encoding="utf-8")):
        _safe(text)
        for shown in ("evil\\x1b\\[2J\\x1b\\]0;owned\\x07", "a\\|b\\|c", "two\\x0alines", "\\`code\\`",
                      "\\<script\\>alert(1)\\</script\\>", "rtl\\u202eexe.txt", "back\\\\\\|slash"):
            assert shown in text, (shown, text)
    assert {json.loads(line)["data_source"] for line in (out / "samples.jsonl").open()} == set(HOSTILE_NAMES)


def test_eval_score_escapes_run_names_and_data_sources(tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "q.jsonl", [{"question": "Normal?", "answer": "yes", "query_type": "yes_no",
                                            "data_source": name, "meta": {"language": name}}
                                           for name in HOSTILE_NAMES])
    assert main(["prep", "rl", str(source), "--output", str(tmp_path / "data")]) == 0
    predictions = _jsonl(tmp_path / "p.jsonl", [{"data_source": name, "index": i, "response": ANSWER.format("yes")}
                                                for i, name in enumerate(HOSTILE_NAMES)])
    out = tmp_path / "s"
    runs = [name for name in HOSTILE_NAMES if "\x00" not in name]  # argv holds no NUL
    runs += ["$\\frac{1}{$", "$x^$"]  # matplotlib mathtext that does not parse
    runs += ["@SUM(1+1)*cmd", "-2+3+cmd|' /C calc'!A0", "+1"]  # spreadsheet formulas (and a number that is none)
    args = [arg for run in runs for arg in ("--run", f"{run}={predictions}")]
    result = _run("eval score hostile names", "eval", "score", "--data", tmp_path / "data", *args, "--output", out)
    assert result.rc == 0, result.err[-2000:]
    for text in (result.out, (out / "report.md").read_text(encoding="utf-8"),
                 (out / "table.md").read_text(encoding="utf-8")):
        _safe(text)
    assert "## evil\\x1b\\[2J" in result.out and "| a\\|b\\|c |" in result.out
    assert (out / "table.png").stat().st_size > 0
    with (out / "table.csv").open(newline="", encoding="utf-8") as f:
        header, *cells = list(csv.reader(f))
    models = [row[0] for row in cells]
    assert "'@SUM(1+1)*cmd" in models and "'-2+3+cmd|' /C calc'!A0" in models and "+1" in models
    for cell in [*header, *(c for row in cells for c in row)]:  # text that would start a formula is quoted
        assert cell[:1] not in ("=", "+", "-", "@") or _is_number(cell) or cell == "-", cell


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_qc_report_escapes_everything_from_records(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png")
    records = [{"image": "a.png", "text": f"A chest film {name}", "data_source": name} for name in HOSTILE_NAMES]
    scores = tmp_path / "scores"
    assert _run("qc score hostile names", "qc", "score", "caption", _jsonl(tmp_path / "c.jsonl", records),
                "--output", scores, "--image-root", images).rc == 0
    result = _run("qc report hostile names", "qc", "report", scores, "--output", tmp_path / "report")
    assert result.rc == 0
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "](http" in page  # markdown is not HTML: shown as it is, escaped as HTML
    assert page.count("<tr>") == page.count("</tr>")


# --- 5. the labels file (numeric options: test_hostile.py) -------------------------------------------------------


@pytest.fixture(scope="module")
def qc_scores(tmp_path_factory) -> Path:
    return _qc_scored(tmp_path_factory.mktemp("qc"))[0]


def _qc_scored(base: Path) -> tuple[Path, list[object]]:
    """Six captions of one image scored under `base`, and the ``qc score --resume`` command of that job."""
    images = base / "images"
    images.mkdir()
    _png(images / "a.png")
    records = [{"image": "a.png", "text": f"A frontal chest film number {i}.", "data_source": "s"} for i in range(6)]
    args = ["qc", "score", "caption", _jsonl(base / "c.jsonl", records), "--output", base / "scores",
            "--image-root", images]
    assert main([str(a) for a in args]) == 0
    return base / "scores", [*args, "--resume"]


@pytest.mark.parametrize("labels", ["none-match", "missing", "directory", "dev-zero", "binary", "many"])
def test_bad_review_labels_are_usage_errors(qc_scores: Path, tmp_path: Path, labels: str) -> None:
    path = tmp_path / "labels.jsonl"
    if labels == "none-match":
        _jsonl(path, [{"source": "elsewhere.jsonl:1", "human_pass": True}, {"source": "c.jsonl:1", "human_pass": 1}])
    elif labels == "directory":
        path.mkdir()
    elif labels == "dev-zero":
        path.symlink_to("/dev/zero")
    elif labels == "binary":
        path.write_bytes(os.urandom(5000))
    elif labels == "many":  # 300k labels of records not sampled: none kept in memory
        with path.open("w") as f:
            for i in range(300_000):
                f.write(f'{{"source": "other.jsonl:{i}", "human_pass": true}}\n')
    result = _run(f"qc report labels {labels}", "qc", "report", qc_scores, "--output", tmp_path / "r", "--labels",
                  path)
    assert result.rc == 2 and "labels.jsonl" in result.err, result.err[-2000:]


# --- 6. resume checks the shards it keeps --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i in range(4):
        _png(root / f"{i}.png", seed=-1, size=96)  # noise: 27 kB each, so a window of images is 270 kB
    return root


def _records(n: int, with_images: bool = True) -> list[dict]:
    return [{"question": f"Is finding {i} normal?", "answer": "yes", "query_type": "yes_no",
             **({"image": f"{i % 4}.png"} if with_images else {})} for i in range(n)]


def _shards(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("part-*.parquet"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images: Path) -> tuple[Path, Path]:
    """An input and its prep output, uninterrupted."""
    base = tmp_path_factory.mktemp("reference")
    source = _jsonl(base / "rl.jsonl", _records(10, with_images=False) + _records(30))
    assert main(["prep", "rl", str(source), "--output", str(base / "out"), "--image-root", str(images),
                 "--rows-per-shard", "10"]) == 0
    return source, base / "out"


def _prep(source: Path, out: Path, images: Path, *extra: object) -> list[object]:
    return ["prep", "rl", source, "--output", out, "--image-root", images, "--rows-per-shard", 10, *extra]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "deleted", "emptied", "swapped"])
def test_resume_redoes_damaged_shards(reference: tuple[Path, Path], images: Path, tmp_path: Path, damage: str
                                      ) -> None:
    source, ref = reference
    out = tmp_path / "out"
    assert main([str(a) for a in _prep(source, out, images)]) == 0
    manifest = _manifest(out)
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in manifest["shards"])
    shard = out / "part-00002.parquet"
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # same size, one byte changed
        shard.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "deleted":
        shard.unlink()
    elif damage == "emptied":
        shard.write_bytes(b"")
    else:  # another shard's bytes under this name
        shard.write_bytes((out / "part-00001.parquet").read_bytes())
    if damage in ("truncated", "emptied"):
        checked = _run(f"validate {damage} shard", "validate", out)
        assert checked.rc == 2 and "part-00002.parquet" in checked.err, checked.err[-2000:]
    result = _run(f"resume {damage} shard", *_prep(source, out, images, "--resume"))
    assert result.rc == 0 and "shard part-00002.parquet is damaged" in result.err, result.err[-2000:]
    assert _shards(out) == _shards(ref)
    assert _manifest(out) == _manifest(ref) | {"job": _manifest(out)["job"]}
    assert _run(f"validate redone {damage}", "validate", out).rc == 0


def test_resume_refuses_a_shard_it_cannot_redo(reference: tuple[Path, Path], images: Path, tmp_path: Path) -> None:
    source, _ = reference
    root = tmp_path / "images"
    root.mkdir()
    for image in images.iterdir():
        (root / image.name).write_bytes(image.read_bytes())
    out = tmp_path / "out"
    assert main([str(a) for a in _prep(source, out, root)]) == 0
    (out / "part-00003.parquet").write_bytes(b"PAR1")
    _png(root / "1.png", seed=99, size=96)  # the same name, another image: the window converts differently
    result = _run("resume unredoable shard", *_prep(source, out, root, "--resume"))
    assert result.rc == 2 and "cannot redo the damaged shard(s) part-00003.parquet" in result.err, result.err[-2000:]
    assert not list(out.glob(".*.tmp"))


MANIFEST_FIELDS = {"read": 0, "written": 0, "rejected": 0, "rejected_by_reason": {}, "complete": False, "files": {}}


@pytest.mark.parametrize("manifest", [
    b"{not json", b"[]", b'{"read": "x"}', b"\xff\xfe", b"[" * 100_000,
    json.dumps({**MANIFEST_FIELDS, "read": "10"}).encode(),
    json.dumps({**MANIFEST_FIELDS, "shards": 5}).encode(),
    json.dumps({**MANIFEST_FIELDS, "shards": [{"file": "../../escape.parquet", "rows": 1}]}).encode(),  # outside
    json.dumps({**MANIFEST_FIELDS, "shards": [{"file": "part-00000.parquet"}]}).encode(),
], ids=["json", "list", "partial", "utf8", "deep", "read-text", "shards-int", "shard-path", "shard-no-rows"])
def test_resume_refuses_a_broken_manifest(reference: tuple[Path, Path], images: Path, tmp_path: Path,
                                          manifest: bytes, request) -> None:
    source, _ = reference
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_bytes(manifest)
    result = _run(f"resume broken manifest {request.node.callspec.id}", *_prep(source, out, images, "--resume"))
    assert result.rc == 2 and "not a readable manifest" in result.err, result.err[-2000:]


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_qc_resume_redoes_damaged_shards(tmp_path: Path, damage: str) -> None:
    scores, resume = _qc_scored(tmp_path)
    first = _shards(scores), _manifest(scores)["shards"]
    shard = scores / "part-00000.parquet"
    for command in (["qc", "filter", scores, "--output", tmp_path / "f"],
                    ["qc", "report", scores, "--output", tmp_path / "r"]):
        shard.write_bytes(shard.read_bytes()[:-10])
        result = _run(f"{command[1]} damaged shard", *command)
        assert result.rc == 2 and "cut short or changed" in result.err, result.err[-2000:]
    if damage == "deleted":
        shard.unlink()
    result = _run(f"qc resume {damage} shard", *resume)
    assert result.rc == 0 and "shard part-00000.parquet is damaged" in result.err, result.err[-2000:]
    assert (_shards(scores), _manifest(scores)["shards"]) == first
    assert _run("qc report redone", "qc", "report", scores, "--output", tmp_path / "r2").rc == 0


def test_qc_resume_refuses_a_shard_it_cannot_redo(tmp_path: Path) -> None:
    scores, resume = _qc_scored(tmp_path)
    (scores / "part-00000.parquet").write_bytes(b"PAR1")
    _png(tmp_path / "images" / "a.png", seed=99)  # the same name, another image: other scores
    result = _run("qc resume unredoable shard", *resume)
    assert result.rc == 2 and "cannot redo the damaged shard(s) part-00000.parquet" in result.err, result.err[-2000:]
    assert not list(scores.glob(".*.tmp"))


# --- 7. one job per directory ------------------------------------------------------------------------------------


def test_a_directory_in_use_is_refused(reference: tuple[Path, Path], images: Path, tmp_path: Path) -> None:
    source, _ = reference
    out = tmp_path / "out"
    with Job(out, "rl", {}):  # this process holds the directory
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == os.getpid()
        for args in (_prep(source, out, images), _prep(source, out, images, "--resume"),
                     ["qc", "score", "rl", source, "--output", out],
                     ["score", "--input", tmp_path / "none.jsonl", "--output", out]):
            (tmp_path / "none.jsonl").write_text(json.dumps({"solution_str": "x", "ground_truth": "y"}) + "\n")
            result = _run(f"lock {' '.join(map(str, args[:2]))}{' --resume' if '--resume' in args else ''}", *args)
            assert result.rc == 2 and f"is in use by another job: process {os.getpid()}" in result.err, result.err
            assert holder["command"][:40] in result.err
    assert not (out / LOCK).exists()  # given up with the job
    assert _run("lock released", *_prep(source, out, images, "--resume")).rc == 0


def test_two_jobs_started_together_one_is_refused(images: Path, tmp_path: Path) -> None:
    source = _jsonl(tmp_path / "rl.jsonl", _records(3000))
    out = tmp_path / "out"
    args = [str(a) for a in _prep(source, out, images)]
    procs = [subprocess.Popen([sys.executable, "-c", _RUNNER, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=TIMEOUT_S), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(rc for rc, _ in results) == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "Traceback" not in refused
    assert "is in use by another job: process" in refused or "already holds a job's output" in refused
    manifest = _manifest(out)
    assert manifest["complete"] and manifest["read"] == 3000


@pytest.mark.parametrize("kind", ["stale", "symlink", "directory"])
def test_lock_files_left_behind(reference: tuple[Path, Path], images: Path, tmp_path: Path, kind: str) -> None:
    source, _ = reference
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    if kind == "stale":  # a job killed with its lock file: no process holds the lock
        (out / LOCK).write_text(json.dumps({"pid": 999999, "command": "medverl prep"}))
    elif kind == "symlink":
        (out / LOCK).symlink_to(target)
    else:
        (out / LOCK).mkdir()
    result = _run(f"lock file {kind}", *_prep(source, out, images))
    assert target.read_text() == "keep me"
    if kind == "stale":
        assert result.rc == 0 and _manifest(out)["complete"]
    else:
        assert result.rc == 2 and "cannot lock" in result.err, result.err[-2000:]


# --- 8. a full disk ------------------------------------------------------------------------------------------------


def _no_partial(out: Path) -> dict:
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".window-*"))
    manifest = _manifest(out)
    assert not manifest["complete"]
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [s["file"] for s in manifest["shards"]]
    for name, length in manifest["files"].items():
        assert (out / name).stat().st_size == length, name
    return manifest


@pytest.mark.parametrize("workers", [1, 2])
def test_file_too_large_ends_cleanly_and_resumes(reference: tuple[Path, Path], images: Path, tmp_path: Path,
                                                 workers: int) -> None:
    source, ref = reference
    out = tmp_path / "out"
    result = _run(f"prep EFBIG workers={workers}", *_prep(source, out, images, "--workers", workers),
                  fsize=60_000)  # the image-less first window fits, a window of images does not
    assert result.rc == 2, result.err[-2000:]
    assert "EFBIG" in result.err and str(out) in result.err and "--resume" in result.err
    manifest = _no_partial(out)
    assert 0 < manifest["read"] < 40
    assert _run(f"prep EFBIG resumed workers={workers}", *_prep(source, out, images, "--resume")).rc == 0
    assert _shards(out) == _shards(ref)


def test_file_too_large_in_other_commands(qc_scores: Path, bench: Path, tmp_path: Path) -> None:
    rows = [{"solution_str": "<answer>yes</answer>" + "x" * 500, "ground_truth": "yes", "query_type": "yes_no"}] * 400
    result = _run("score EFBIG", "score", "--input", _jsonl(tmp_path / "p.jsonl", rows), "--output",
                  tmp_path / "scored", fsize=50_000)
    assert result.rc == 2 and "EFBIG" in result.err, result.err[-2000:]
    assert not list((tmp_path / "scored").glob(".*.tmp"))
    # samples.jsonl does not fit; then the chart does not (each report file is whole or absent, the job incomplete)
    for fsize, absent in ((2_000, {"samples.jsonl", "report.md", "table.png"}), (20_000, {"table.png"})):
        out = tmp_path / f"eval{fsize}"
        predictions = _predictions(tmp_path / "p.jsonl", list(REPLIES))
        result = _run(f"eval score EFBIG {fsize}", "eval", "score", "--data", bench, "--run", f"m={predictions}",
                      "--output", out, fsize=fsize)
        assert result.rc == 2 and "EFBIG" in result.err, result.err[-2000:]
        assert not list(out.glob(".*.tmp")) and not _manifest(out)["complete"]
        assert not absent & {p.name for p in out.iterdir()}
    result = _run("qc report EFBIG", "qc", "report", qc_scores, "--output", tmp_path / "report", fsize=1_000)
    assert result.rc == 2 and "EFBIG" in result.err and "report" in result.err, result.err[-2000:]
    assert not list((tmp_path / "report").glob(".*.tmp")) and not (tmp_path / "report" / "report.html").exists()
    job = _manifest(qc_scores)["job"]
    out = tmp_path / "qc"
    result = _run("qc score EFBIG", "qc", "score", "caption", job["inputs"][0]["path"], "--output", out,
                  "--image-root", job["image_root"][0], fsize=3000)
    assert result.rc == 2 and "EFBIG" in result.err, result.err[-2000:]
    # its one window was not finished: nothing of it is left, not even a first manifest
    assert sorted(p.name for p in out.iterdir()) == ["rejects.jsonl"] and not (out / "rejects.jsonl").stat().st_size
    assert _run("qc score EFBIG resumed", "qc", "score", "caption", job["inputs"][0]["path"], "--output", out,
                "--image-root", job["image_root"][0], "--resume").rc == 0
    assert _shards(out).keys() == _shards(qc_scores).keys()


@pytest.mark.parametrize("where", ["shard", "manifest", "rejects"])
def test_disk_full_ends_cleanly_and_resumes(reference: tuple[Path, Path], images: Path, tmp_path: Path,
                                            monkeypatch, capsys, where: str) -> None:
    from medverl.data import job as job_module
    from medverl.data import runner

    source, ref = reference
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / source.name).write_text(source.read_text() + "{broken\n")
    source = tmp_path / "in" / source.name  # a window of one reject at the end
    out = tmp_path / "out"
    calls = {"n": 0}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "shard":  # the third window's shard: half written, then the disk is full
        write_pending = runner._ShardWriter._write_pending

        def write(self) -> None:
            calls["n"] += 1
            write_pending(self)
            if calls["n"] == 3:
                full()

        monkeypatch.setattr(runner._ShardWriter, "_write_pending", write)
    elif where == "manifest":
        write_manifest = job_module.Job._write_manifest

        def write(self, complete: bool) -> dict:
            calls["n"] += 1
            if calls["n"] == 3:
                self.temporary("manifest.json").write_text("{\"partial")
                full()
            return write_manifest(self, complete)

        monkeypatch.setattr(job_module.Job, "_write_manifest", write)
    else:
        reject = job_module.Job.reject

        def write(self, rejected) -> None:
            reject(self, rejected)
            full()

        monkeypatch.setattr(job_module.Job, "reject", write)
    assert main([str(a) for a in _prep(source, out, images)]) == 2
    err = capsys.readouterr().err
    assert "ENOSPC" in err and str(out) in err and "--resume" in err, err
    _no_partial(out)
    assert not (out / LOCK).exists()
    monkeypatch.undo()
    assert main([str(a) for a in _prep(source, out, images, "--resume")]) == 0
    assert _shards(out) == _shards(ref)
    assert _manifest(out)["rejected_by_reason"] == {"malformed_json": 1}

