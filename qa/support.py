"""Is each answer sentence backed by the abstract it cites?

A model can cite a real paper from the context for a claim that paper never makes (a swapped
or lazy citation); the citation guard cannot see that, because the marker itself is valid.
Each sentence is scored by how much of its content the cited abstracts hold: the IDF-weighted
share of its words found in the cited title+abstract (IDF over the papers given, so words
every abstract uses count little), blended with the share of its word pairs found there (a
claim copied or closely paraphrased keeps its pairs; a swapped one keeps only topic words).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import pairwise

from qa.citations import MARKER_GROUP, paper_keys
from qa.corpus import Paper
from qa.retrieval import stems

SUPPORTED = 0.4  # score at or above which a sentence counts as supported (see `qa eval`)
PAIR_WEIGHT = 0.5  # share of the score that comes from word pairs
WEAK_NOTE = " ⚠️ *weakly supported by the cited abstract*"
_SENTENCE = re.compile(r"(?<=[.!?\]])\s+(?=[A-Z0-9(\"'\[])")


@dataclass
class SentenceSupport:
    """One answer sentence: the papers it cites, its score (0..1) and the verdict.

    `supported` is None for a sentence that cites nothing (there is nothing to check)."""

    text: str
    citations: list[str]
    score: float
    supported: bool | None

    def to_dict(self) -> dict:
        return {**asdict(self), "score": round(self.score, 4)}


def split_sentences(text: str) -> list[str]:
    """Answer text → sentences (a marker before or after the full stop stays with its own)."""
    out: list[str] = []
    for piece in _SENTENCE.split(" ".join(text.split())):
        if out and not MARKER_GROUP.sub("", piece).strip(" .,;"):
            out[-1] = f"{out[-1]} {piece}"  # "Claim. [arXiv:X]" cites the claim before it
        elif piece.strip():
            out.append(piece.strip())
    return out


def _weights(papers: list[Paper]) -> tuple[dict[str, set[str]], Counter[str]]:
    words = {p.key: set(stems(f"{p.title} {p.abstract}")) for p in papers}
    df: Counter[str] = Counter(w for found in words.values() for w in found)
    return words, df


def _pairs(tokens: list[str]) -> set[tuple[str, str]]:
    return set(pairwise(tokens))


def check_support(
    text: str, papers: Iterable[Paper], threshold: float | None = None
) -> list[SentenceSupport]:
    """`qa.check_support`: per sentence, its citations, a support score and a verdict.

    `papers` are the papers the answer could cite (the context); a citation to any other
    paper scores 0.
    """
    threshold = SUPPORTED if threshold is None else threshold
    papers = list(papers)
    by_key = {p.key: p for p in papers} | {p.arxiv_id: p for p in papers if p.arxiv_id}
    words, df = _weights(papers)
    n = max(len(papers), 1)
    pair_sets = {p.key: _pairs(stems(f"{p.title} {p.abstract}")) for p in papers}
    out = []
    for sentence in split_sentences(text):
        keys = list(dict.fromkeys(k for m in MARKER_GROUP.findall(sentence) for k in paper_keys(m)))
        cited = [by_key[k] for k in keys if k in by_key]
        claim = stems(MARKER_GROUP.sub(" ", sentence))
        if not keys or not claim:
            out.append(SentenceSupport(sentence, keys, 0.0, None if not keys else True))
            continue
        weight = {w: math.log(1 + n / (df[w] or 0.5)) for w in set(claim)}
        total = sum(weight.values())
        pairs = _pairs(claim)
        best = 0.0
        for paper in cited:
            unigram = sum(v for w, v in weight.items() if w in words[paper.key]) / total
            pair = len(pairs & pair_sets[paper.key]) / len(pairs) if pairs else unigram
            best = max(best, (1 - PAIR_WEIGHT) * unigram + PAIR_WEIGHT * pair)
        out.append(SentenceSupport(sentence, keys, best, best >= threshold))
    return out


def mark_weak(text: str, support: list[SentenceSupport]) -> str:
    """The answer with a visible note after each sentence its citation does not back."""
    weak = [s.text for s in support if s.supported is False]
    for sentence in weak:
        text = text.replace(sentence, sentence + WEAK_NOTE, 1)
    return text
