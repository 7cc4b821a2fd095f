"""A loopback HTTP server speaking the arXiv API's Atom format (a pytest plugin).

`pytest_plugins = ["fake_arxiv"]` gives a test the `serve` fixture: `serve(entries)` starts a
`FakeArxiv` on 127.0.0.1 (free port) and returns `(fake, url_format)`. It answers `ti:"…"` /
`abs:"…"` phrase queries, `cat:X`, `all` and `id_list` look-ups, pages by `start`/`max_results`
with `opensearch:totalResults` as the real API does (user manual, "Details of Atom Results"),
and records every request.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape, quoteattr

import pytest


@dataclass
class Entry:
    arxiv_id: str  # with version, as the API reports it
    title: str
    summary: str
    authors: list[str] = field(default_factory=lambda: ["A. Author"])
    categories: list[str] = field(default_factory=lambda: ["cs.SD"])  # primary first
    published: str = "2023-06-28T06:31:47Z"
    updated: str = "2023-06-28T06:31:47Z"
    comment: str = "Accepted by INTERSPEECH 2023"
    journal_ref: str = ""
    doi: str = ""


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def contains(haystack: str, phrase: str) -> bool:
    """Phrase match on word tokens, as a search engine's phrase query does."""
    return f" {' '.join(_words(phrase))} " in f" {' '.join(_words(haystack))} "


def _entry_xml(e: Entry) -> str:
    url = f"http://arxiv.org/abs/{e.arxiv_id}"
    # the API wraps long titles and abstracts over lines; the client must cope
    title = escape(e.title).replace(" Deep ", "\n  Deep ")
    authors = "".join(f"<author><name>{escape(a)}</name></author>" for a in e.authors)
    cats = "".join(
        f'<category term={quoteattr(c)} scheme="http://arxiv.org/schemas/atom"/>'
        for c in e.categories
    )
    optional = "".join(
        f"<arxiv:{tag}>{escape(value)}</arxiv:{tag}>"
        for tag, value in (("comment", e.comment), ("journal_ref", e.journal_ref), ("doi", e.doi))
        if value
    )
    return f"""
  <entry>
    <id>{url}</id>
    <updated>{e.updated}</updated>
    <published>{e.published}</published>
    <title>{title}</title>
    <summary>  {escape(e.summary)}
</summary>
    {authors}
    {optional}
    <link href="{url}" rel="alternate" type="text/html"/>
    <link title="pdf" href="{url.replace("/abs/", "/pdf/")}" rel="related"
          type="application/pdf"/>
    <arxiv:primary_category term={quoteattr(e.categories[0])}
        scheme="http://arxiv.org/schemas/atom"/>
    {cats}
  </entry>"""


def feed(entries: list[Entry], query: str = "", start: int = 0, total: int | None = None) -> bytes:
    """An Atom feed shaped like the arXiv API's: one page of `entries` out of `total`."""
    total = len(entries) if total is None else total
    items = "".join(map(_entry_xml, entries))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"
      xmlns:arxiv="http://arxiv.org/schemas/atom">
  <link href="http://arxiv.org/api/query" rel="self" type="application/atom+xml"/>
  <title type="html">ArXiv Query: search_query={escape(query)}</title>
  <id>http://arxiv.org/api/fake</id>
  <updated>2023-07-01T00:00:00-04:00</updated>
  <opensearch:totalResults>{total}</opensearch:totalResults>
  <opensearch:startIndex>{start}</opensearch:startIndex>
  <opensearch:itemsPerPage>{len(entries)}</opensearch:itemsPerPage>{items}
</feed>
""".encode()


class FakeArxiv:
    """Answers `search_query` from its entries, one page at a time; records every request.

    `loose=True` returns every entry for every query, like a relevance search that also lists
    near misses. `body`/`status`/`delay` override the answer to simulate a broken API;
    `fail_from` answers HTTP 503 from that request on.
    """

    def __init__(self, entries: list[Entry], *, loose: bool = False) -> None:
        self.entries = entries
        self.loose = loose
        self.requests: list[dict[str, str]] = []
        self.body: bytes | None = None
        self.status = 200
        self.delay = 0.0
        self.fail_from: int | None = None

    def answer(self, query: str) -> list[Entry]:
        if self.loose or query.strip() == "all":
            return list(self.entries)
        if cats := re.findall(r"cat:(\S+)", query):
            return [e for e in self.entries if set(cats) & set(e.categories)]
        clauses = re.findall(r'(ti|abs):"([^"]*)"', query)
        return [
            e
            for e in self.entries
            if clauses and all(contains(e.title if f == "ti" else e.summary, p) for f, p in clauses)
        ]

    def page(self, params: dict[str, str]) -> bytes:
        query = params.get("search_query", "")
        found = self.answer(query)
        if ids := [i for i in params.get("id_list", "").split(",") if i]:
            found = [e for e in self.entries if e.arxiv_id.rsplit("v", 1)[0] in ids]
        start = int(params.get("start", 0))
        size = int(params.get("max_results", 10))
        return feed(found[start : start + size], query, start, len(found))

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                fake.requests.append({"path": parts.path, **params})
                time.sleep(fake.delay)
                body = fake.body if fake.body is not None else fake.page(params)
                failing = fake.fail_from is not None and len(fake.requests) > fake.fail_from
                try:
                    self.send_response(503 if failing else fake.status)
                    self.send_header("Content-Type", "application/atom+xml; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args) -> None:
                pass

        return Handler

    @property
    def queries(self) -> list[str]:
        return [r.get("search_query", "") for r in self.requests]


@pytest.fixture
def serve():
    """Start a FakeArxiv on 127.0.0.1 (free port); returns (fake, url_format)."""
    servers = []

    def start(entries: list[Entry], **kwargs) -> tuple[FakeArxiv, str]:
        fake = FakeArxiv(entries, **kwargs)
        server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return fake, f"http://127.0.0.1:{server.server_address[1]}/api/query?{{}}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
