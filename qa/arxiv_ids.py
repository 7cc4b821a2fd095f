"""arXiv identifiers: the one place that reads them in every form users and feeds write.

Accepted: `2306.15875`, `2306.15875v2`, `arXiv:2306.15875` (any case), `https://arxiv.org/abs/…`
and `/pdf/…(.pdf)`, old-style `hep-th/9901001` (and `math.GT/0309136`). Versions are split off:
the corpus cites papers, not versions. An ID whose month or year cannot exist (`2399.00001`,
`0612.1234`, a five-digit number before 2015) is refused with the reason, never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

# Old-style IDs (0704-1412) have four digits after the dot, new ones five: trying the old form
# first keeps "arXiv:1405.12343D scenes…" (an ID glued to the next abstract) from eating the "3".
ARXIV_ID = (
    r"(?:(?:0[7-9]|1[0-4])\d{2}\.\d{4}|\d{4}\.\d{5}|\d{4}\.\d{4}"
    r"|[a-z\-]+(?:\.[A-Z]{2})?/\d{7})"
)
_PREFIX = re.compile(
    r"^(?:(?:https?://)?(?:www\.|export\.)?arxiv\.org/(?:abs|pdf)/|arxiv:\s*)", re.IGNORECASE
)
_FORM = re.compile(r"(?P<id>\d{4}\.\d{4,5}|[a-zA-Z\-]+(?:\.[A-Za-z]{2})?/\d{7})(?:v(?P<v>\d+))?")
FIRST_NEW_STYLE = (2007, 4)  # arXiv switched to YYMM.NNNN in April 2007
FIRST_FIVE_DIGITS = (2015, 1)  # and to five-digit numbers in January 2015
FIRST_OLD_STYLE_YEAR = 1991


class ArxivIdError(ValueError):
    """Text that is not an arXiv ID; the message says why."""


@dataclass(frozen=True)
class ArxivId:
    id: str  # without version: what the corpus keys and cites
    version: int | None = None

    @property
    def month(self) -> date:
        """The first day of the month the ID was assigned (its first version)."""
        return _id_month(self.id)


def _id_month(arxiv_id: str) -> date:
    digits = arxiv_id.split("/")[-1][:4]
    yy, mm = int(digits[:2]), int(digits[2:])
    if "/" in arxiv_id:
        year = 1900 + yy if yy >= FIRST_OLD_STYLE_YEAR - 1900 else 2000 + yy
    else:
        year = 2000 + yy
    return date(year, mm, 1)


def parse_arxiv_id(text: str) -> ArxivId:
    """An ID in any common form → ArxivId; raises ArxivIdError naming what is wrong."""
    raw = " ".join(str(text).split())
    body = _PREFIX.sub("", raw).removesuffix(".pdf").strip().rstrip("/")
    match = _FORM.fullmatch(body)
    if not match:
        raise ArxivIdError(f"{raw!r} is not an arXiv ID (like 2306.15875 or hep-th/9901001)")
    arxiv_id = match.group("id")
    if "/" in arxiv_id:
        archive, number = arxiv_id.split("/")
        arxiv_id = f"{archive.lower()}/{number}"
        if "." in archive:  # subject class: math.GT
            head, sub = archive.split(".")
            arxiv_id = f"{head.lower()}.{sub.upper()}/{number}"
    digits = arxiv_id.split("/")[-1]
    month = int(digits[2:4])
    if not 1 <= month <= 12:
        raise ArxivIdError(f"{raw!r} is not an arXiv ID: month {digits[2:4]} does not exist")
    when = _id_month(arxiv_id)
    if "/" in arxiv_id:
        if (when.year, when.month) >= FIRST_NEW_STYLE:
            raise ArxivIdError(f"{raw!r}: old-style IDs end in March 2007; this one is later")
    else:
        number = arxiv_id.split(".")[1]
        if (when.year, when.month) < FIRST_NEW_STYLE:
            raise ArxivIdError(f"{raw!r}: new-style IDs start in April 2007 (0704.NNNN)")
        if (len(number) == 5) != ((when.year, when.month) >= FIRST_FIVE_DIGITS):
            rule = "five digits from 2015 on" if len(number) == 4 else "four digits before 2015"
            raise ArxivIdError(f"{raw!r} is not an arXiv ID: the number has {rule}")
    version = int(match.group("v")) if match.group("v") else None
    if version == 0:
        raise ArxivIdError(f"{raw!r} is not an arXiv ID: versions start at v1")
    return ArxivId(arxiv_id, version)


def normalize_id(text: str) -> str:
    """The version-less ID of `text` (any accepted form); raises ArxivIdError."""
    return parse_arxiv_id(text).id


def try_normalize_id(text: str | None) -> str | None:
    """The version-less ID, or None for anything that is not a valid arXiv ID."""
    if not text:
        return None
    try:
        return normalize_id(text)
    except ArxivIdError:
        return None


def id_month(arxiv_id: str | None) -> date | None:
    """Publication month from a valid ID (2306.15875 → 2023-06-01), else None."""
    normal = try_normalize_id(arxiv_id)
    return _id_month(normal) if normal else None
