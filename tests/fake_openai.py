"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

It speaks the real wire format (JSON bodies, SSE streams, OpenAI's error JSON, chunked
transfer encoding) so the real `openai` client and `ChatOpenAI` run unmodified against it.
Each request takes the next scripted reply; with none left it answers with `default_text`.

Use it from any test module:

    pytest_plugins = ["fake_openai"]              # in the test module

    def test_x(fake_openai):
        fake_openai.add_error(429, headers={"retry-after": "0"})
        fake_openai.add_text("Hello there.")
        model = get_chat_model(f"openai-compatible:m@{fake_openai.base_url}")
        ...
        assert fake_openai.requests[-1].body["messages"][0]["role"] == "system"
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    """One scripted answer: `kind` picks the behaviour, the rest parameterise it."""

    kind: str  # "text" | "error" | "hang" | "cut" | "malformed"
    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 0.0
    chunks_before_cut: int = 2


@dataclass
class RecordedRequest:
    """What the client sent, for assertions on headers and the JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error envelope, as its API returns it."""
    kinds = {
        401: ("invalid_request_error", "invalid_api_key"),
        429: ("requests", "rate_limit_exceeded"),
    }
    kind, code = kinds.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _words(text: str) -> list[str]:
    """Split text into streaming pieces whose concatenation is the text."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return [p for p in pieces if p]


class FakeOpenAI:
    """The server plus its script; `base_url` ends in `/v1` like the real API."""

    def __init__(self, model: str = "fake-model") -> None:
        self.model = model
        self.default_text = "This is the fake server's answer."
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------
    def add_text(self, text: str) -> None:
        """Answer normally (JSON, or SSE when the request asks to stream)."""
        self._push(Reply("text", text=text))

    def add_error(
        self,
        status: int,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        """Answer with an HTTP error status and OpenAI's error JSON body."""
        body = openai_error_body(status, message or f"Fake error {status}")
        if code:
            body["error"]["code"] = code
        self._push(Reply("error", status=status, body=body, headers=headers or {}))

    def add_hang(self, seconds: float) -> None:
        """Accept the request and say nothing for `seconds` (released at shutdown)."""
        self._push(Reply("hang", seconds=seconds))

    def add_cut_stream(self, text: str, chunks_before_cut: int = 2) -> None:
        """Start an SSE stream, send a few chunks, then close the socket mid-body."""
        self._push(Reply("cut", text=text, chunks_before_cut=chunks_before_cut))

    def add_malformed(self, body: str = '{"id": "chatcmpl-x", "choices": [') -> None:
        """Answer 200 with a JSON content type but a body that is not JSON."""
        self._push(Reply("malformed", text=body))

    def _push(self, reply: Reply) -> None:
        with self._lock:
            self._script.append(reply)

    def next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Reply("text", self.default_text)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def wait(self, seconds: float) -> None:
        """Sleep that ends early when the server stops, so hung handlers do not linger."""
        self._stop.wait(seconds)

    def completion(self, text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    def chunks(self, text: str) -> Iterator[dict[str, Any]]:
        """The chat.completion.chunk objects of a streamed answer, last one with the stop."""
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": self.model}
        base["created"] = int(time.time())
        first = {"role": "assistant", "content": ""}
        yield {**base, "choices": [{"index": 0, "delta": first, "finish_reason": None}]}
        for piece in _words(text):
            delta = {"content": piece}
            yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_fake = fake

    return Handler


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 so streams use chunked encoding and a cut is detectable by the client."""

    protocol_version = "HTTP/1.1"
    server_fake: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            model = {"id": self.server_fake.model, "object": "model", "owned_by": "fake"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, openai_error_body(404, f"Unknown path {self.path}"))

    def do_POST(self) -> None:
        body = self._read_body()
        fake = self.server_fake
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake.requests.append(RecordedRequest("POST", self.path, headers, body))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, openai_error_body(404, f"Unknown path {self.path}"))
            return
        reply = fake.next_reply()
        streaming = isinstance(body, dict) and bool(body.get("stream"))
        # A client that gave up (timeouts) has nobody left to tell.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._act(reply, streaming)

    def _act(self, reply: Reply, streaming: bool) -> None:
        fake = self.server_fake
        if reply.kind == "hang":
            fake.wait(reply.seconds)
            self._send_json(200, fake.completion("too late"))
        elif reply.kind == "error":
            self._send_json(reply.status, reply.body, reply.headers)
        elif reply.kind == "malformed":
            self._send_raw(200, reply.text.encode(), "application/json")
        elif reply.kind == "cut":
            self._stream(reply.text, cut_after=reply.chunks_before_cut)
        elif streaming:
            self._stream(reply.text)
        else:
            self._send_json(200, fake.completion(reply.text))

    def _read_body(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            return json.loads(raw or b"null")
        except json.JSONDecodeError:
            return raw.decode(errors="replace")

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_raw(
        self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, text: str, cut_after: int | None = None) -> None:
        """SSE over chunked encoding; with `cut_after`, drop the socket mid-stream."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, chunk in enumerate(self.server_fake.chunks(text)):
            if cut_after is not None and i >= cut_after:
                self._drop()
                return
            self._write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection abruptly, the way a crashed proxy or server would."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fresh fake OpenAI-compatible server per test; `.base_url` is its `/v1` root."""
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()
