"""An OpenAI-compatible chat client for LLM judges: bounded concurrency and replies (compressed ones bounded as they
inflate), a deadline per call, retries with backoff, verdicts cached by content (kept aside when the cache takes no
writes), and the judge's command-line options.

A call that still fails after its retries is a failure with its error, never a verdict: the QC scorer
(:mod:`medverl.qc.judge`) and the answer judge (:mod:`medverl.eval.judge`) count those apart.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path

import httpx

from medverl.errors import ConfigError

logger = logging.getLogger(__name__)

# A verdict is a few hundred bytes; a reply this large is not one (and is not read further).
DEFAULT_MAX_REPLY_BYTES = 1 << 20
# Upper bounds of the judge's options: past them a value is a typo (and a wait past a day overflows a timer).
MAX_TIMEOUT_S, MAX_RETRIES, MAX_CONCURRENCY = 86400.0, 100, 1024
MAX_BACKOFF_S = 60.0
API_KEY_VARIABLE = "OPENAI_API_KEY"
M_ARENA_MAX = -8  # glibc's mallopt parameter: how many malloc arenas threads may create
JUDGE_ARENAS = 2


def _few_malloc_arenas() -> None:
    """Let the judge's threads share a few malloc arenas. glibc reserves 64 MiB of address space for each thread's
    own arena: 16 waiting judge threads would fill a 2 GiB address-space limit with reservations never used."""
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, JUDGE_ARENAS)
    except (OSError, AttributeError):  # not glibc: nothing to limit
        pass


class JudgeReplyError(ValueError):
    """A reply that is not the chat completion, or not the JSON verdict, the judge asks for."""


def reply_content(payload: bytes) -> object:
    """The first choice's message content of a chat completion reply; raises :class:`JudgeReplyError` for any other
    shape."""
    try:
        reply = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, too deep
        raise JudgeReplyError(f"the reply is not JSON: {str(exc)[:100] or type(exc).__name__}") from None
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices:
        raise JudgeReplyError("the reply has no choices (not a chat completion)")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise JudgeReplyError("the reply's first choice has no message")
    if message.get("content") is None:
        raise JudgeReplyError("the reply's message content is null")
    return message["content"]


def reply_object(content: object) -> dict:
    """A judge reply's JSON object (a fenced code block is unwrapped); raises :class:`JudgeReplyError`."""
    if not isinstance(content, str):
        raise JudgeReplyError(f"the message content is {type(content).__name__}, not text")
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        verdict = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JudgeReplyError(f"not JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise JudgeReplyError(f"not usable JSON: {'nested too deeply' if isinstance(exc, RecursionError) else exc}"
                              ) from None
    if not isinstance(verdict, dict):
        raise JudgeReplyError("not a JSON object")
    try:  # a lone surrogate (a "\\ud800" escape) could be neither stored nor written out as UTF-8
        json.dumps(verdict, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JudgeReplyError("the reply holds a lone surrogate (invalid Unicode)") from None
    except RecursionError:
        raise JudgeReplyError("not usable JSON: nested too deeply") from None
    return verdict


# What a reply may be compressed with: each is inflated here, a bounded piece at a time (an inflating reply is never
# held whole in memory past the reply cap, however far it would inflate).
_CONTENT_CODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"


class _BoundedDecoder:
    """A reply body's content coding undone, refusing output past `cap` bytes."""

    def __init__(self, content_encoding: str, cap: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip().lower() not in ("", "identity")]
        if len(codings) > 1:
            raise JudgeReplyError(f"the reply is encoded more than once ({content_encoding}); one coding is read")
        if codings and codings[0] not in _CONTENT_CODINGS:
            raise JudgeReplyError(f"the reply's content encoding {codings[0]!r} is not one of {ACCEPT_ENCODING}")
        self._inflate = zlib.decompressobj(_CONTENT_CODINGS[codings[0]]) if codings else None
        self.cap, self.size = cap, 0

    def decode(self, data: bytes) -> bytes:
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data, self.cap - self.size + 1)
            except zlib.error as exc:
                raise JudgeReplyError(f"the reply does not decompress: {exc}") from None
        self.size += len(data)
        if self.size > self.cap:
            raise JudgeReplyError(f"the reply is over the cap of {self.cap} bytes"
                                  + (" once decompressed" if self._inflate is not None else ""))
        return data


_MIME_SIGNATURES = ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF8", "gif"), (b"BM", "bmp"),
                    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"))


def image_mime_subtype(data: bytes) -> str:
    """The MIME subtype of image bytes by their signature (``png`` when none is known).

    >>> image_mime_subtype(b"RIFF\\x00\\x00\\x00\\x00WEBPVP8 ")
    'webp'
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((kind for signature, kind in _MIME_SIGNATURES if data.startswith(signature)), "png")


def data_uri(data: bytes) -> str:
    """Image bytes as a ``data:`` URI (what OpenAI-compatible chat endpoints take), typed by their signature."""
    return f"data:image/{image_mime_subtype(data)};base64,{base64.b64encode(data).decode()}"


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to call the judge. A field with ``flag`` metadata is a ``--judge-FLAG`` option of every
    command that has a judge (:func:`add_judge_arguments`)."""

    base_url: str = field(metadata={"flag": "url", "metavar": "URL", "help": "an OpenAI-compatible base URL (e.g. "
                                    f"http://host:8000/v1); the API key is read from {API_KEY_VARIABLE}"})
    model: str = field(metadata={"flag": "model", "metavar": "NAME", "help": "the judge's served model name"})
    api_key: str = "EMPTY"
    concurrency: int = field(default=8, metadata={"flag": "concurrency", "metavar": "N",
                                                  "help": "judge calls at a time"})
    timeout_s: float = field(default=120.0, metadata={
        "flag": "timeout", "metavar": "SECONDS",
        "help": "seconds per judge call in all (connecting, sending, the whole reply)"})
    retries: int = field(default=3, metadata={"flag": "retries", "metavar": "N",
                                              "help": "retries per call, with backoff"})
    backoff_s: float = 1.0
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES

    def __post_init__(self) -> None:
        if not (0 < self.timeout_s <= MAX_TIMEOUT_S and math.isfinite(self.timeout_s)):
            raise ValueError(f"the judge timeout must be a positive number of seconds up to {MAX_TIMEOUT_S:g}, got "
                             f"{self.timeout_s}")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ValueError(f"the judge retries must be 0 to {MAX_RETRIES}, got {self.retries}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"the judge concurrency must be 1 to {MAX_CONCURRENCY}, got {self.concurrency}")


_OPTIONS = [f for f in fields(JudgeConfig) if "flag" in f.metadata]


def _option_type(option: Field) -> Callable[[str], object]:
    """An argparse type for a number option: its field's type, checked by :class:`JudgeConfig`'s own validation."""
    kind = type(option.default)

    def parse(value: str) -> object:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {value!r}") from None
        try:
            JudgeConfig("", "", **{option.name: number})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return number

    return parse


def add_judge_arguments(parser: argparse._ActionsContainer) -> None:
    """The judge's options (``--judge-url``, ``--judge-model``, ...), the same for every command that has one."""
    group = parser.add_argument_group("LLM judge")
    for option in _OPTIONS:
        number = option.default is not MISSING
        group.add_argument(f"--judge-{option.metadata['flag']}", dest=f"judge_{option.name}",
                           type=_option_type(option) if number else str, default=option.default if number else None,
                           metavar=option.metadata["metavar"], help=option.metadata["help"])


def judge_config(args: argparse.Namespace) -> JudgeConfig | None:
    """The :class:`JudgeConfig` of :func:`add_judge_arguments` options; None when no judge is asked for.

    Raises:
        ConfigError: only one of ``--judge-url`` and ``--judge-model``, or a value out of range.
    """
    if not (args.judge_base_url or args.judge_model):
        return None
    if not (args.judge_base_url and args.judge_model):
        raise ConfigError("an LLM judge needs both --judge-url and --judge-model")
    try:
        return JudgeConfig(api_key=os.environ.get(API_KEY_VARIABLE, "EMPTY"),
                           **{option.name: getattr(args, f"judge_{option.name}") for option in _OPTIONS})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _open_cache(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A cache database, its table made and read once; raises :class:`sqlite3.Error` or :class:`OSError`."""
    if path.exists() and not path.is_file():
        raise OSError(f"it is a {'directory' if path.is_dir() else 'special file'}, not a file")
    db = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT)")
        db.execute("SELECT key, verdict FROM verdicts LIMIT 1").fetchall()
    except sqlite3.Error:
        db.close()
        raise
    return db


class VerdictCache:
    """Verdicts by key in one SQLite file, safe across the judge's threads.

    A verdict that cannot be written to it (a read-only, locked or full cache) is written to `fallback` instead,
    and kept in memory either way: a verdict paid for is never asked again in this run, and :meth:`unsaved` says
    where it went.

    Raises:
        ConfigError: the file cannot be used as a cache (not a SQLite file, a directory, locked by another process).
    """

    def __init__(self, path: str | Path, parse: Callable[[object], dict], fallback: str | Path | None = None,
                 timeout_s: float = 5.0) -> None:
        self.path, self._parse, self._timeout_s = Path(path), parse, timeout_s  # parse: what a valid verdict is
        self.fallback = Path(fallback) if fallback is not None else None
        try:
            self._db = _open_cache(self.path, timeout_s)
        except (sqlite3.Error, OSError) as exc:
            hint = ("another process holds it: wait for it, or give another --judge-cache" if "locked" in str(exc)
                    else "move it away, or give another --judge-cache")
            raise ConfigError(f"the judge cache {self.path} cannot be used ({exc}); {hint}") from None
        self._spare: sqlite3.Connection | None = None
        self._memory: dict[str, dict] = {}
        self._failure = ""  # why the cache took no more writes
        self._kept_aside = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        """The cached verdict, or None (also for an entry that is not a valid verdict: it is asked again)."""
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            try:
                row = self._db.execute("SELECT verdict FROM verdicts WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as exc:
                logger.warning("judge cache %s could not be read (%s); asking the judge", self.path, exc)
                return None
        if row is None:
            return None
        try:
            return self._parse(row[0])
        except JudgeReplyError:
            return None

    def put(self, key: str, verdict: dict) -> None:
        """Keep a verdict: in the cache, else in the fallback file, and in memory for the rest of the run."""
        row = (key, json.dumps(verdict))
        with self._lock:
            self._memory[key] = verdict
            if not self._failure:
                try:
                    self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", row)
                    self._db.commit()
                    return
                except sqlite3.Error as exc:
                    self._failure = str(exc)
                    self._rollback(self._db)
                    logger.warning("judge cache %s takes no more verdicts (%s); keeping them in %s", self.path, exc,
                                   self.fallback or "memory")
                    self._spare = self._open_spare()
            self._kept_aside += 1
            if self._spare is not None:
                try:
                    self._spare.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", row)
                    self._spare.commit()
                except sqlite3.Error as exc:
                    logger.warning("judge verdicts cannot be written to %s either (%s); they are kept in memory "
                                   "for this run", self.fallback, exc)
                    self._rollback(self._spare)
                    self._spare.close()
                    self._spare = None

    def _open_spare(self) -> sqlite3.Connection | None:
        if self.fallback is None or self.fallback.resolve() == self.path.resolve():
            return None
        try:
            return _open_cache(self.fallback, self._timeout_s)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("judge verdicts cannot be written to %s either (%s); they are kept in memory for this "
                           "run", self.fallback, exc)
            return None

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        try:
            db.rollback()
        except sqlite3.Error:
            pass

    def unsaved(self) -> str:
        """Where the verdicts the cache did not take are, in a sentence; empty when it took them all."""
        if not self._kept_aside:
            return ""
        where = (f"they are in {self.fallback}: give it as --judge-cache to reuse them" if self._spare is not None
                 else "they were kept only for this run (its output holds them)")
        return f"{self._kept_aside} judge verdict(s) could not be written to {self.path} ({self._failure}); {where}"

    def close(self) -> None:
        for db in (self._db, self._spare):
            if db is not None:
                db.close()


@dataclass
class JudgeOutcome:
    """A verdict, or the error of a failed call."""

    verdict: dict | None
    error: str = ""


class Judge:
    """A prompt (its ``{text}`` filled per item) asked of the endpoint, `config.concurrency` calls at a time; each
    reply is read by `parse` and the verdict cached by the prompt's version, the model, the text and the images.

    Args:
        config: the endpoint and its limits.
        prompt: the prompt's text; ``{text}`` stands for the item.
        version: the prompt's name, part of every cache key (a new prompt asks again).
        parse: the reply's content to a verdict; raises :class:`JudgeReplyError` for a reply that is not one.
        cache_path: the SQLite file of cached verdicts.
        fallback_path: where verdicts go when the cache takes no writes (see :class:`VerdictCache`).
    """

    def __init__(self, config: JudgeConfig, prompt: str, version: str, parse: Callable[[object], dict],
                 cache_path: str | Path, fallback_path: str | Path | None = None) -> None:
        self.config, self.prompt, self.version, self.parse = config, prompt, version, parse
        self.cache = VerdictCache(cache_path, parse, fallback_path)
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._client = httpx.Client(base_url=config.base_url.rstrip("/"), timeout=config.timeout_s,
                                    headers={"Authorization": f"Bearer {config.api_key}",
                                             "Accept-Encoding": ACCEPT_ENCODING},
                                    limits=httpx.Limits(max_connections=config.concurrency))
        # twice the calls in flight: room for requests left running past their deadline
        _few_malloc_arenas()
        self._calls = ThreadPoolExecutor(2 * config.concurrency, thread_name_prefix="judge-call")

    def key(self, text: str, images: Sequence[bytes]) -> str:
        digest = hashlib.sha256()
        for part in (self.version, self.config.model, text, *images):
            digest.update(part.encode() if isinstance(part, str) else part)
            digest.update(b"\0")
        return digest.hexdigest()

    def score(self, text: str, images: Sequence[bytes] = ()) -> JudgeOutcome:
        """One item: from the cache, or by calling the judge (retried); never raises for the endpoint's faults."""
        key = self.key(text, images)
        if (cached := self.cache.get(key)) is not None:
            return JudgeOutcome(cached)
        content = [{"type": "image_url", "image_url": {"url": data_uri(i)}} for i in images]
        content.append({"type": "text", "text": self.prompt.replace("{text}", text)})
        body = {"model": self.config.model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
        error = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(min(self.config.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                with self._slots:
                    status, payload = self._post(body)
                if status == 429 or status >= 500:
                    error = f"HTTP {status}"
                    continue
                if status != 200:
                    error = f"HTTP {status}: {payload[:200].decode('utf-8', 'replace')}"
                    continue
                verdict = self.parse(reply_content(payload))
            except (httpx.HTTPError, JudgeReplyError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            self.cache.put(key, verdict)
            return JudgeOutcome(verdict)
        logger.warning("judge failed after %d attempts: %s", self.config.retries + 1, error)
        return JudgeOutcome(None, error=error)

    def _post(self, body: dict, path: str = "/chat/completions", method: str = "POST") -> tuple[int, bytes]:
        """One request within the call's total deadline (`timeout_s` from the start, however slowly the reply
        comes) and its reply of at most `max_reply_bytes`; raises :class:`JudgeReplyError` past either.

        The request runs in a thread of its own so that the deadline holds even while a read waits: a request
        still running then is left to end by itself (its reads time out, its loop stops at the deadline)."""
        deadline = time.monotonic() + self.config.timeout_s
        call = self._calls.submit(self._request, body, path, method, deadline)
        try:
            return call.result(timeout=self.config.timeout_s)
        except FutureTimeout:
            call.cancel()
            raise JudgeReplyError(f"the reply took longer than the call's {self.config.timeout_s:g} s") from None

    def _request(self, body: dict, path: str, method: str, deadline: float) -> tuple[int, bytes]:
        cap = self.config.max_reply_bytes
        kwargs = {"json": body} if method == "POST" else {}
        with self._client.stream(method, path, timeout=self.config.timeout_s, **kwargs) as reply:
            length = reply.headers.get("content-length", "")
            if length.isdigit() and int(length) > cap:
                raise JudgeReplyError(f"the reply of {length} bytes is over the cap of {cap}")
            decoder = _BoundedDecoder(reply.headers.get("content-encoding", ""), cap)
            chunks, size = [], 0
            for chunk in reply.iter_raw():  # as sent: inflated here, within the cap
                size += len(chunk)
                if size > cap:
                    raise JudgeReplyError(f"the reply is over the cap of {cap} bytes")
                chunks.append(decoder.decode(chunk))
                if time.monotonic() > deadline:
                    raise JudgeReplyError(f"the reply took longer than the call's {self.config.timeout_s:g} s")
            return reply.status_code, b"".join(chunks)

    def preflight(self) -> None:
        """Fail fast before a job: the endpoint answers, speaks the OpenAI API and serves the model; raises
        :class:`~medverl.errors.ConfigError` (exit status 2) saying which."""
        where = f"judge endpoint {self.config.base_url}"
        try:
            status, payload = self._post({}, "/models", "GET")
            if status == 200:
                listing = json.loads(payload)
                if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
                    raise JudgeReplyError("its /models reply is not a model list (an object with a list 'data')")
                served = [m.get("id") for m in listing["data"] if isinstance(m, dict)]
                if served and self.config.model not in served:
                    raise ConfigError(f"{where} does not serve --judge-model {self.config.model!r}; it serves "
                                      f"{', '.join(map(str, served[:20]))}")
                return
            # not every server lists its models: one minimal completion tells as much
            probe = {"model": self.config.model, "max_tokens": 1, "temperature": 0,
                     "messages": [{"role": "user", "content": [{"type": "text", "text": "ping"}]}]}
            status, payload = self._post(probe)
            if status != 200:
                raise ConfigError(f"{where} answered HTTP {status} to a chat completion: "
                                  f"{payload[:200].decode('utf-8', 'replace')} (is the URL the /v1 base and the "
                                  "model name right?)")
            reply_content(payload)
        except (httpx.HTTPError, JudgeReplyError, ValueError, RecursionError, AttributeError) as exc:
            raise ConfigError(f"{where} is unreachable or not OpenAI-compatible: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """End the calls; says (a warning) where verdicts the cache could not take are."""
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        if unsaved := self.cache.unsaved():
            logger.warning("%s", unsaved)
        self.cache.close()
