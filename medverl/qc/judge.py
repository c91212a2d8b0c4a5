"""The `judge` quality scorer: a vision-language model behind any OpenAI-compatible chat endpoint.

The rubric is a prompt file (``medverl/prompts/qc_rubric_v1.txt``); the reply must be one JSON object with an
integer 1-5 per dimension and a rationale, checked against that schema. Calls run with bounded concurrency and are
retried with exponential backoff on timeouts, 429/5xx and malformed replies; a call that still fails is a judge
failure, counted apart and never a score. Verdicts are cached by the record's content hash, the rubric version and
the model, so rerunning a job costs no calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from medverl.data.images import data_uri
from medverl.qc.rules import DIMENSIONS

logger = logging.getLogger(__name__)

RUBRIC_VERSION = "qc_rubric_v1"


def load_rubric(version: str = RUBRIC_VERSION) -> str:
    return (Path(__file__).resolve().parent.parent / "prompts" / f"{version}.txt").read_text(encoding="utf-8")


class JudgeReplyError(ValueError):
    """A reply that is not the JSON object the rubric asks for."""


def parse_verdict(content: str) -> dict:
    """The judge's reply as ``{dimension: 1-5, ..., "rationale": str}``; raises :class:`JudgeReplyError`."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        verdict = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JudgeReplyError(f"not JSON: {exc.msg}") from None
    if not isinstance(verdict, dict):
        raise JudgeReplyError("not a JSON object")
    for dimension in DIMENSIONS:
        value = verdict.get(dimension)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise JudgeReplyError(f"{dimension} must be an integer 1-5, got {value!r}")
    if not isinstance(verdict.get("rationale"), str):
        raise JudgeReplyError("rationale must be a string")
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


class VerdictCache:
    """Verdicts by key in one SQLite file, safe across the judge's threads."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT)")
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT verdict FROM verdicts WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

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
    """Scores records through the endpoint, bounded to `config.concurrency` calls at a time."""

    def __init__(self, config: JudgeConfig, cache: VerdictCache) -> None:
        self.config, self.cache = config, cache
        self.rubric = load_rubric(config.rubric_version)
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._client = httpx.Client(base_url=config.base_url.rstrip("/"), timeout=config.timeout_s,
                                    headers={"Authorization": f"Bearer {config.api_key}"},
                                    limits=httpx.Limits(max_connections=config.concurrency))

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
                    reply = self._client.post("/chat/completions", json=body)
                if reply.status_code == 429 or reply.status_code >= 500:
                    error = f"HTTP {reply.status_code}"
                    continue
                reply.raise_for_status()
                verdict = parse_verdict(reply.json()["choices"][0]["message"]["content"])
            except (httpx.HTTPError, JudgeReplyError, KeyError, IndexError, TypeError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            self.cache.put(key, verdict)
            return JudgeOutcome(verdict)
        logger.warning("judge failed after %d attempts: %s", self.config.retries + 1, error)
        return JudgeOutcome(None, error=error)

    def close(self) -> None:
        self._client.close()
