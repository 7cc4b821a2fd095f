"""An OpenAI-compatible /v1/embeddings server that answers at once (run as a subprocess).

Each text gets a fixed unit vector picked by a hash of the text from a table made once, so
the server costs next to nothing and the same text always gets the same vector: what is
measured against it is our own pipeline (parse, chunk, record, HTTP, Chroma, keyword index).
Like OpenAI and the usual servers (vLLM, TEI, Infinity), it answers `encoding_format:
"base64"` (what the openai client asks for) with float32 bytes, and floats otherwise.

Usage: python benchmarks/_instant_embeddings.py PORT
"""

from __future__ import annotations

import base64
import json
import sys
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

DIM = 384
_rng = np.random.default_rng(7)
_table = _rng.normal(size=(4096, DIM)).astype(np.float32)
_unit = _table / np.linalg.norm(_table, axis=1, keepdims=True)
TABLE = _unit.tolist()
TABLE_BASE64 = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in _unit]


def row(text: str) -> int:
    return zlib.crc32(text.encode()) % len(TABLE)


def vector(text: str) -> list[float]:
    return TABLE[row(text)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        table = TABLE_BASE64 if body.get("encoding_format") == "base64" else TABLE
        data = [{"object": "embedding", "index": i, "embedding": table[row(t)]} for i, t in
                enumerate(inputs)]  # fmt: skip
        raw = json.dumps({"object": "list", "data": data, "model": body["model"],
                          "usage": {"prompt_tokens": 0, "total_tokens": 0}}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
