"""A loopback OpenAI-compatible endpoint for the judge clients' tests: subclass :class:`Endpoint`, say how it
answers a request's text in ``answer``, and run it with :func:`serve`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chat_reply(content: object) -> bytes:
    """A chat-completion response body holding `content` as the assistant's message."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class Endpoint(BaseHTTPRequestHandler):
    """``GET /v1/models`` lists ``models``; ``POST /v1/chat/completions`` records the last text part of the first
    message in ``calls`` and sends what ``answer`` returns; other paths are 404."""

    models: tuple[str, ...] = ("vlm",)
    calls: list[str] = []

    def answer(self, text: str) -> tuple[int, bytes] | None:
        """``(status, body)`` for a request's text, or None when the handler wrote the response itself."""
        raise NotImplementedError

    def do_GET(self) -> None:
        if self.path != "/v1/models":
            return self.send(404, b"not found")
        return self.send(200, json.dumps({"object": "list", "data": [{"id": m} for m in self.models]}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self.send(404, b"not found")
        text = body["messages"][0]["content"][-1]["text"]
        type(self).calls.append(text)
        if (response := self.answer(text)) is not None:
            self.send(*response)
        return None

    def send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve(handler: type[Endpoint]) -> Iterator[str]:
    """Serve `handler` on a free loopback port with fresh ``calls``; yields the base URL (``.../v1``)."""
    handler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
