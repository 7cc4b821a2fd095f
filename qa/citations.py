"""Parse, validate and render `[arXiv:ID]` citation markers.

Models write markers in many near-miss forms (`[arXiv: 2306.15875v2]`, `(arXiv:2306.15875)`,
`[2306.15875]`, `[arXiv:A, arXiv:B]`); all are read, normalised to `[arXiv:ID]`, and kept only
when they name a paper that was in the context. Anything else is removed and recorded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from qa.corpus import ARXIV_ID as _CORPUS_ID
from qa.corpus import Paper

# In running text an ID ends at a non-digit (corpus files may glue the next abstract to it).
ARXIV_ID = rf"(?:{_CORPUS_ID})(?!\d)"

_ONE = rf"(?:arXiv:\s*)?(?:{ARXIV_ID})(?:v\d+)?|ref:\s*h[0-9a-f]{{12}}"
# A bracketed group of one or more references, or a bare `arXiv:ID` in running text.
MARKER_GROUP = re.compile(
    rf"[\[(]\s*(?:{_ONE})(?:\s*[,;]\s*(?:{_ONE}))*\s*[\])]|\barXiv:\s*{ARXIV_ID}(?:v\d+)?",
    re.IGNORECASE,
)
_REF = re.compile(rf"(?:arXiv:\s*)?({ARXIV_ID})(?:v\d+)?|ref:\s*(h[0-9a-f]{{12}})", re.IGNORECASE)
ABS_URL = "https://arxiv.org/abs/{}"
# The same marker twice or more in a row (`[arXiv:X][arXiv:X]`) is shown once.
_REPEATED = re.compile(r"(\[(?:arXiv|ref):[^\]\s]+\])(?:\s*\1)+")


def paper_keys(group: str) -> list[str]:
    """Paper keys named in one marker group: arXiv IDs or `h…` content keys."""
    return [m.group(1) or m.group(2) for m in _REF.finditer(group)]


def marker_for_key(key: str) -> str:
    """The marker for a paper key: `[ref:h…]` for content keys, `[arXiv:ID]` otherwise."""
    return f"[ref:{key}]" if re.fullmatch(r"h[0-9a-f]{12}", key) else f"[arXiv:{key}]"


@dataclass
class Validated:
    text: str
    citations: list[Paper] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def validate(text: str, context: Iterable[Paper]) -> Validated:
    """Keep markers of context papers (normalised), drop all others; cited papers in order."""
    result = _filter_markers(text, context)
    result.text = _REPEATED.sub(r"\1", result.text).strip()
    return result


def _filter_markers(text: str, context: Iterable[Paper]) -> Validated:
    allowed = {p.key: p for p in context}
    allowed.update({p.arxiv_id: p for p in allowed.values() if p.arxiv_id})
    cited: dict[str, Paper] = {}
    dropped: list[str] = []

    def replace(match: re.Match) -> str:
        kept = []
        for key in paper_keys(match.group(0)):
            paper = allowed.get(key)
            if paper is None:
                dropped.append(key)
            elif paper.key not in {p.key for p in kept}:
                kept.append(paper)
                cited.setdefault(paper.key, paper)
        return "".join(p.marker for p in kept)

    cleaned = MARKER_GROUP.sub(replace, text)
    if dropped:  # tidy the gap a removed marker leaves ("word  ." → "word.")
        cleaned = re.sub(r"[ \t]+([.,;:])", r"\1", re.sub(r"[ \t]{2,}", " ", cleaned))
    return Validated(cleaned, list(cited.values()), dropped)


def render_markdown(text: str) -> str:
    """Turn `[arXiv:ID]` markers into markdown links to the arXiv abstract page."""
    return re.sub(
        rf"\[arXiv:({ARXIV_ID})\](?!\()",
        lambda m: f"[arXiv:{m.group(1)}]({ABS_URL.format(m.group(1))})",
        text,
    )


class StreamGuard:
    """Hold back streamed text that could be the start of a marker until it is complete.

    Streaming must never show a marker that validation would later remove, so text is
    released only up to the last `[`/`(` that might still open a marker; complete markers
    are validated before they are released.
    """

    HOLD = 64  # longest marker group we wait for before giving up on a bracket

    def __init__(self, context: Iterable[Paper]):
        self.context = list(context)
        self.buffer = ""

    def feed(self, chunk: str) -> Iterator[str]:
        self.buffer += chunk
        cut = self._safe_prefix_end()
        if cut:
            out, self.buffer = self.buffer[:cut], self.buffer[cut:]
            yield from self._emit(out)

    def flush(self) -> Iterator[str]:
        out, self.buffer = self.buffer, ""
        yield from self._emit(out)

    def _safe_prefix_end(self) -> int:
        """Index up to which the buffer cannot hold the start of an unfinished marker."""
        text = self.buffer
        opener = max(text.rfind("["), text.rfind("("))
        if opener >= 0 and max(text.rfind("]"), text.rfind(")")) > opener:
            opener = -1  # the last bracket group is closed: complete
        bare = text.lower().rfind("arxiv")
        if bare >= 0 and re.match(rf"arXiv:\s*{ARXIV_ID}(?:v\d+)?\W", text[bare:], re.I):
            bare = -1  # a finished bare reference
        partial = next(  # "…ar" might become "arXiv:…" in the next chunk
            (len(text) - n for n in range(5, 0, -1) if text[-n:].lower() == "arxiv"[:n]), -1
        )
        held = [i for i in (opener, bare, partial) if i >= 0 and len(text) - i < self.HOLD]
        return min(held, default=len(text))

    def _emit(self, text: str) -> Iterator[str]:
        if text:
            yield _filter_markers(text, self.context).text
