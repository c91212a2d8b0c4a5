"""The `judge` quality scorer: a vision-language model behind any OpenAI-compatible chat endpoint.

The rubric is a prompt file (``medverl/prompts/qc_rubric_v1.txt``); the reply must be one JSON object with an
integer 1-5 per dimension and a rationale, checked against that schema. Calls run with bounded concurrency and are
retried with exponential backoff on timeouts, 429/5xx and malformed replies; a call that still fails is a judge
failure, counted apart and never a score. Verdicts are cached by the record's content hash, the rubric version and
the model, so rerunning a job costs no calls.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from medverl.data.images import data_uri
from medverl.errors import ConfigError
from medverl.qc.rules import DIMENSIONS

logger = logging.getLogger(__name__)

RUBRIC_VERSION = "qc_rubric_v1"


def load_rubric(version: str = RUBRIC_VERSION) -> str:
    return (Path(__file__).resolve().parent.parent / "prompts" / f"{version}.txt").read_text(encoding="utf-8")


class JudgeReplyError(ValueError):
    """A reply that is not the JSON object the rubric asks for."""


_SURROGATE = re.compile("[\ud800-\udfff]")
# A verdict is a few hundred bytes; a reply this large is not one (and is not read further).
DEFAULT_MAX_REPLY_BYTES = 1 << 20


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
    return verdict


def parse_verdict(content: object) -> dict:
    """The judge's reply as ``{dimension: 1-5, ..., "rationale": str}``; raises :class:`JudgeReplyError`."""
    verdict = reply_object(content)
    for dimension in DIMENSIONS:
        value = verdict.get(dimension)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise JudgeReplyError(f"{dimension} must be an integer 1-5, got {value!r}")
    if not isinstance(verdict.get("rationale"), str):
        raise JudgeReplyError("rationale must be a string")
    if _SURROGATE.search(verdict["rationale"]):
        raise JudgeReplyError("rationale holds a lone surrogate (invalid Unicode)")
    return {**{d: verdict[d] for d in DIMENSIONS}, "rationale": verdict["rationale"]}


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to call the judge."""

    base_url: str
    model: str
    api_key: str = "EMPTY"
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    rubric_version: str = RUBRIC_VERSION
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and self.timeout_s < float("inf")) or self.retries < 0 or self.concurrency < 1:
            raise ValueError(f"judge timeout must be a positive number of seconds, retries 0 or more and concurrency "
                             f"1 or more; got {self.timeout_s}, {self.retries}, {self.concurrency}")


class VerdictCache:
    """Verdicts by key in one SQLite file, safe across the judge's threads."""

    def __init__(self, path: str | Path, parse: Callable[[object], dict] = parse_verdict) -> None:
        self._parse = parse  # what a valid verdict is (the rubric's by default)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT)")
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        """The cached verdict, or None (also for an entry that is not a valid verdict: it is asked again)."""
        with self._lock:
            row = self._db.execute("SELECT verdict FROM verdicts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return self._parse(row[0])
        except JudgeReplyError:
            return None

    def put(self, key: str, verdict: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, json.dumps(verdict)))
            self._db.commit()


@dataclass
class JudgeOutcome:
    """A verdict, or the error of a failed call."""

    verdict: dict | None
    error: str = ""


class Judge:
    """Scores records through the endpoint, bounded to `config.concurrency` calls at a time; a subclass with
    another prompt (``config.rubric_version`` names its file) sets ``parse`` to read its verdicts."""

    parse = staticmethod(parse_verdict)

    def __init__(self, config: JudgeConfig, cache: VerdictCache) -> None:
        self.config, self.cache = config, cache
        self.rubric = load_rubric(config.rubric_version)
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._client = httpx.Client(base_url=config.base_url.rstrip("/"), timeout=config.timeout_s,
                                    headers={"Authorization": f"Bearer {config.api_key}"},
                                    limits=httpx.Limits(max_connections=config.concurrency))
        # twice the calls in flight: room for requests left running past their deadline
        self._calls = ThreadPoolExecutor(2 * config.concurrency, thread_name_prefix="judge-call")

    def key(self, text: str, images: list[bytes]) -> str:
        digest = hashlib.sha256()
        for part in (self.config.rubric_version, self.config.model, text, *images):
            digest.update(part.encode() if isinstance(part, str) else part)
            digest.update(b"\0")
        return digest.hexdigest()

    def score(self, text: str, images: list[bytes]) -> JudgeOutcome:
        """One record: from the cache, or by calling the judge (retried); never raises for the endpoint's faults."""
        key = self.key(text, images)
        if (cached := self.cache.get(key)) is not None:
            return JudgeOutcome(cached)
        content = [{"type": "image_url", "image_url": {"url": data_uri(i)}} for i in images]
        content.append({"type": "text", "text": self.rubric.replace("{text}", text)})
        body = {"model": self.config.model, "temperature": 0, "messages": [{"role": "user", "content": content}]}
        error = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
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
            chunks, size = [], 0
            for chunk in reply.iter_bytes():  # decoded: a compressed bomb is capped as it inflates
                chunks.append(chunk)
                size += len(chunk)
                if size > cap:
                    raise JudgeReplyError(f"the reply is over the cap of {cap} bytes")
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
                served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)]
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
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._client.close()
