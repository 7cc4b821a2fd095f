"""Start-up checks and request bounds for the web UI (`python app.py`, `qa serve`).

Problems an operator can fix become one `SettingsError` line naming the variable (QA_HOST,
QA_PORT) instead of Gradio's advice about GRADIO_SERVER_PORT; every HTTP request body is
bounded by QA_MAX_REQUEST_BYTES before Gradio reads it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from qa.config import SettingsError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def check_bind(host: str, port: int) -> None:
    """Bind (host, port) once, as the server will; a failure names the variable to change."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise SettingsError(
            f"QA_HOST: {host!r} is not an address or host name of this machine ({exc}); "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise SettingsError(bind_problem(host, port, exc)) from None


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind: which setting to change, and to what."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"QA_PORT: port {port} on {host} is already in use (another arxiv-qa or another "
            "server); stop it or set QA_PORT to a free port"
        )
    if exc.errno == errno.EACCES:
        return f"QA_PORT: port {port} needs administrator rights here; use a port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"QA_HOST: {host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0, "
            "or one of this machine's addresses"
        )
    return f"QA_HOST/QA_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"


class BodyLimit:
    """ASGI middleware: refuse (413) any HTTP request whose body exceeds `max_bytes`, by its
    Content-Length or, for a body of unannounced length (chunked), by reading at most
    `max_bytes` of it first. Starlette and Gradio bound only uploads (max_file_size), not the
    JSON of an API call."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        parts, size = [], 0
        message = await receive()
        while message["type"] == "http.request":
            parts.append(message.get("body", b""))
            size += len(parts[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body"):
                break
            message = await receive()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            if message["type"] != "http.request":  # the client left while sending
                return message
            return {"type": "http.request", "body": b"".join(parts), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = (
            f"Request too large: the limit is {self.max_bytes:,} bytes (QA_MAX_REQUEST_BYTES)."
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
