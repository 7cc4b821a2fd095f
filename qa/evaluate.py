"""`qa eval`: retrieval and answer quality on the golden set, printed as figures.

Retrieval is scored per mode (keyword, dense, hybrid) on single-paper questions (recall@1/5/10,
MRR) and multi-paper topics (recall@10 against the complete gold list); abstention is scored
on off-corpus and chit-chat questions; answers (with `--answers`) on citation of a gold paper,
expected facts and dropped citations.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qa.chain import ask, is_chitchat, normalize_history, search_query
from qa.config import PROJECT_ROOT, Settings, get_settings
from qa.models import get_chat_model
from qa.retrieval import Hit, Mode, relevance, retrieve

GOLDEN = PROJECT_ROOT / "evals" / "golden.jsonl"
SINGLE = ("paraphrase", "method", "fact", "followup")
ABSTAIN = ("offcorpus", "chitchat")
MODES: tuple[Mode, ...] = ("keyword", "dense", "hybrid")


@dataclass
class Case:
    id: str
    type: str
    question: str
    gold: list[str]
    history: list[dict] = field(default_factory=list)
    fact: str | None = None


def load_golden(path: Path = GOLDEN) -> list[Case]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            cases.append(Case(**{k: row.get(k) for k in Case.__dataclass_fields__ if k in row}))
    return cases


def _search_text(case: Case, settings: Settings) -> str:
    """The query the chain would retrieve with (follow-ups rewritten by the stub)."""
    history = normalize_history(case.history)
    return search_query(case.question, history, get_chat_model("stub", settings), settings)[1]


def _rank(hits: list[Hit], gold: list[str]) -> int | None:
    keys = [h.paper.key for h in hits]
    ranks = [keys.index(g) + 1 for g in gold if g in keys]
    return min(ranks) if ranks else None


def retrieval_metrics(
    cases: list[Case], mode: Mode, settings: Settings, k: int = 10
) -> dict[str, float]:
    """recall@1/5/10 and MRR on single-paper cases; recall@10 on multi-paper topics."""
    singles = [c for c in cases if c.type in SINGLE]
    multis = [c for c in cases if c.type == "multi"]
    ranks = [
        _rank(retrieve(_search_text(c, settings), k, mode=mode, settings=settings), c.gold)
        for c in singles
    ]
    multi = []
    for case in multis:
        keys = {h.paper.key for h in retrieve(case.question, k, mode=mode, settings=settings)}
        multi.append(len(keys & set(case.gold)) / len(case.gold))
    n = max(len(ranks), 1)
    return {
        "R@1": sum(r == 1 for r in ranks) / n,
        "R@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "R@10": sum(r is not None for r in ranks) / n,
        "MRR": sum(1 / r for r in ranks if r) / n,
        "multi R@10": sum(multi) / max(len(multi), 1),
    }


def abstention_scores(cases: list[Case], settings: Settings) -> list[tuple[float, bool]]:
    """(best relevance, should abstain) per case; chit-chat is answered without retrieval."""
    scored = []
    for case in cases:
        if case.type == "chitchat" and is_chitchat(case.question):
            scored.append((-1.0, True))
            continue
        hits = retrieve(_search_text(case, settings), settings.k, settings=settings)
        best = 2.0 if hits and hits[0].pinned else max((relevance(h) for h in hits), default=0)
        scored.append((best, case.type in ABSTAIN))
    return scored


def precision_recall(scored: list[tuple[float, bool]], threshold: float) -> tuple[float, float]:
    predicted = [(s < threshold, truth) for s, truth in scored]
    tp = sum(p and t for p, t in predicted)
    return tp / max(sum(p for p, _ in predicted), 1), tp / max(sum(t for _, t in predicted), 1)


def best_threshold(scored: list[tuple[float, bool]]) -> float:
    """The threshold with the best F1 for abstention (ties: the lower, answering more)."""
    candidates = sorted({round(s, 3) for s, _ in scored if s >= 0})

    def f1(t: float) -> float:
        p, r = precision_recall(scored, t)
        return 2 * p * r / (p + r) if p + r else 0.0

    return max(candidates, key=lambda t: (f1(t), -t), default=0.35)


def answer_metrics(cases: list[Case], settings: Settings, model: str) -> dict[str, float]:
    """Run the whole chain: gold cited, facts present, abstention, dropped citations."""
    cited_gold, answerable, facts, fact_hits, dropped = 0, 0, 0, 0, 0
    abstain_tp = abstain_pred = abstain_true = 0
    for case in cases:
        answer = ask(case.question, case.history, model, settings=settings)
        dropped += len(answer.dropped_citations)
        should = case.type in ABSTAIN
        abstain_pred += answer.abstained
        abstain_true += should
        abstain_tp += answer.abstained and should
        if should:
            continue
        answerable += 1
        cited_gold += any(p.key in case.gold for p in answer.citations)
        if case.fact:
            facts += 1
            fact_hits += case.fact.lower() in " ".join(answer.text.lower().split())
    return {
        "cites a gold paper": cited_gold / max(answerable, 1),
        "fact in answer": fact_hits / max(facts, 1),
        "abstention precision": abstain_tp / max(abstain_pred, 1),
        "abstention recall": abstain_tp / max(abstain_true, 1),
        "dropped citations": float(dropped),
    }


def _table(rows: dict[str, dict[str, float]]) -> str:
    cols = list(next(iter(rows.values())))
    widths = [max(12, len(c) + 2) for c in cols]
    lines = [f"{'':<22}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))]
    lines += [
        f"{name:<22}" + "".join(f"{v[c]:>{w}.3f}" for c, w in zip(cols, widths, strict=True))
        for name, v in rows.items()
    ]
    return "\n".join(lines)


def run_eval(
    settings: Settings | None = None,
    *,
    answers: bool = False,
    model: str = "stub",
    sweep: bool = False,
    golden: Path = GOLDEN,
    echo: Callable[[str], None] = print,
) -> dict:
    """Print (and return) every figure `qa eval` reports."""
    settings = settings or get_settings()
    cases = load_golden(golden)
    start = time.perf_counter()
    counts = {t: sum(c.type == t for c in cases) for t in dict.fromkeys(c.type for c in cases)}
    echo(f"golden set: {len(cases)} questions {counts}")
    results: dict = {"retrieval": {m: retrieval_metrics(cases, m, settings) for m in MODES}}
    if sweep:
        for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
            for fusion in ("convex", "rrf"):
                tuned = settings.model_copy(update={"keyword_weight": w, "fusion": fusion})
                results["retrieval"][f"hybrid {fusion} w={w}"] = retrieval_metrics(
                    cases, "hybrid", tuned
                )
    echo("\nretrieval (single-paper R@k/MRR, multi-paper recall@10)")
    echo(_table(results["retrieval"]))
    scored = abstention_scores(cases, settings)
    p, r = precision_recall(scored, settings.abstain_threshold)
    results["abstention"] = {
        "threshold": settings.abstain_threshold,
        "precision": p,
        "recall": r,
        "best_f1_threshold": best_threshold(scored),
    }
    echo(
        f"\nabstention at threshold {settings.abstain_threshold:.3f}: precision {p:.3f}, "
        f"recall {r:.3f} (best-F1 threshold on this set: "
        f"{results['abstention']['best_f1_threshold']:.3f})"
    )
    if answers:
        results["answers"] = answer_metrics(cases, settings, model)
        echo(f"\nanswers ({model})")
        echo(_table({model: results["answers"]}))
    echo(f"\n{time.perf_counter() - start:.1f} s")
    return results
