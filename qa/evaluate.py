"""`qa eval`: retrieval and answer quality on the golden set, printed as figures.

Retrieval is scored per mode (keyword, dense, hybrid) on single-paper questions (recall@1/5/10,
MRR), multi-paper topics (recall@10 against the complete gold list) and generic topic
questions (is the first paper one that uses the phrase); abstention is scored
on off-corpus and chit-chat questions; answers (with `--answers`) on citation of a gold paper,
expected facts and dropped citations.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from qa import relevance as gate
from qa.chain import ask, normalize_history, search_query
from qa.config import PROJECT_ROOT, Settings, get_settings
from qa.models import get_chat_model
from qa.retrieval import Hit, Mode, retrieve
from qa.support import check_support, split_sentences

GOLDEN = PROJECT_ROOT / "evals" / "golden.jsonl"
SINGLE = ("paraphrase", "method", "fact", "pair", "followup")
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
    wording: str = "plain"  # how the question is phrased: plain, polite or terse
    split: str = "tune"  # "heldout" rows are never used to fit or choose anything


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
    """recall@1/5/10 and MRR on single-paper cases; recall@10 on multi-paper topics; on generic
    topic questions, the share whose first paper uses the topic's phrase (P@1)."""
    singles = [c for c in cases if c.type in SINGLE]
    multis = [c for c in cases if c.type == "multi"]
    ranks = [
        _rank(retrieve(_search_text(c, settings), k, mode=mode, settings=settings), c.gold)
        for c in singles
    ]
    topics = [c for c in cases if c.type == "topic"]
    first = [_rank(retrieve(c.question, 1, mode=mode, settings=settings), c.gold) for c in topics]
    multi = []
    for case in multis:
        keys = {h.paper.key for h in retrieve(case.question, k, mode=mode, settings=settings)}
        multi.append(len(keys & set(case.gold)) / len(case.gold))
    n = max(len(ranks), 1)
    follow = [r for r, c in zip(ranks, singles, strict=True) if c.type == "followup"]
    return {
        "R@1": sum(r == 1 for r in ranks) / n,
        "follow-up R@1": sum(r == 1 for r in follow) / max(len(follow), 1),
        "R@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "R@10": sum(r is not None for r in ranks) / n,
        "MRR": sum(1 / r for r in ranks if r) / n,
        "multi R@10": sum(multi) / max(len(multi), 1),
        "topic P@1": sum(r == 1 for r in first) / max(len(first), 1),
    }


WORDINGS = ("plain", "polite", "terse")
_POLITE = (
    "Hi! I'm new to this field, could you please help me understand: {q}",
    "Could you please explain to me in simple terms: {q}",
    "Hello there, can you tell me {q} Thanks!",
    "I'd like to know more about this: {q} Please explain briefly.",
)
_TERSE_SKIP = frozenset(STOPWORDS_EN) | {"what", "which", "how", "why", "does", "do", "did"}


def reword(question: str, wording: str, seed: int = 0) -> str:
    """The same question asked politely (greeting and request frame) or tersely (keywords)."""
    if wording == "polite":
        return _POLITE[seed % len(_POLITE)].format(q=question[:1].lower() + question[1:])
    if wording == "terse":
        words = [w.strip("?,.!;:()\"'") for w in question.split()]
        return " ".join(w for w in words if w and w.lower() not in _TERSE_SKIP)
    return question


@dataclass
class GateSet:
    """Feature rows for the relevance gate: one per (question, wording)."""

    rows: np.ndarray
    labels: np.ndarray  # 1 = answerable, 0 = off-corpus
    groups: list[str]  # the case id (all wordings of a question share a fold)
    wordings: list[str]
    heldout: np.ndarray


def gate_set(cases: list[Case], settings: Settings) -> GateSet:
    """Every answerable or off-corpus question in each wording (follow-ups pin their paper
    and chit-chat never reaches retrieval, so neither is the gate's to decide)."""
    rows, labels, groups, wordings, heldout = [], [], [], [], []
    for i, case in enumerate(c for c in cases if c.type not in ("followup", "chitchat")):
        variants = WORDINGS if case.wording == "plain" else (case.wording,)
        for wording in variants:
            question = case.question
            if case.wording == "plain":
                question = reword(question, wording, i)
            hits = retrieve(question, settings.k, settings=settings)
            rows.append(gate.features(question, hits, gate.corpus_idf(settings), settings))
            labels.append(0 if case.type == "offcorpus" else 1)
            groups.append(case.id)
            wordings.append(wording)
            heldout.append(case.split == "heldout")
    return GateSet(np.array(rows), np.array(labels), groups, wordings, np.array(heldout))


def calibrate(cases: list[Case], settings: Settings, path: Path | None = None) -> dict:
    """Fit the gate on the tuning rows; pick the operating point on cross-validated
    predictions; save it. Held-out rows are not touched."""
    data = gate_set(cases, settings)
    tune = ~data.heldout
    rows, labels = data.rows[tune], data.labels[tune]
    groups = [g for g, t in zip(data.groups, tune, strict=True) if t]
    oof = gate.out_of_fold(rows, labels, groups)
    model = gate.fit(rows, labels)
    model.threshold = gate.operating_point(oof, labels)
    wordings = np.array(data.wordings)[tune]
    model.meta = {
        "fitted_on": int(tune.sum()),
        "cross_validated": _by_wording(oof, labels, wordings, model.threshold),
    }
    model.save(path or settings.relevance_model)
    return {"threshold": model.threshold, **model.meta}


def _by_wording(
    probs: np.ndarray, labels: np.ndarray, wordings: np.ndarray, cut: float
) -> dict[str, dict[str, float]]:
    out = {}
    for wording in WORDINGS:
        sel = wordings == wording
        if sel.any():
            out[wording] = {
                "ROC AUC": gate.roc_auc(probs[sel], labels[sel]),
                **gate.rates(probs[sel], labels[sel], cut),
                "n": float(sel.sum()),
            }
    return out


def gate_metrics(cases: list[Case], settings: Settings) -> dict[str, dict[str, float]]:
    """The saved gate on the held-out rows and (in-sample) on the tuning rows, per wording."""
    data = gate_set(cases, settings)
    model = gate.load_model(settings.relevance_model)
    probs = model.probability(data.rows) if len(data.rows) else np.zeros(0)
    cut = gate.threshold(settings)
    wordings = np.array(data.wordings)
    out = {}
    for name, sel in (("held-out", data.heldout), ("tuning", ~data.heldout)):
        for wording, row in _by_wording(probs[sel], data.labels[sel], wordings[sel], cut).items():
            out[f"{name} {wording}"] = row
    return out


def support_metrics(cases: list[Case], settings: Settings, papers: int = 60) -> dict[str, float]:
    """Abstract sentences cited right vs. the same sentences citing the nearest other paper
    (the hardest swap: same topic, shared words), each checked against the context the chain
    would build for it. Detection = swaps flagged; false flags = right citations flagged, and
    hand-written paraphrases (the follow-up histories) flagged. Papers are spread evenly."""
    index = gate.get_retriever(settings).index
    keys = _all_keys(settings)
    step = max(len(keys) // papers, 1)
    right, flagged_right, flagged_swap = 0, 0, 0
    for key in keys[::step][:papers]:
        paper = index.papers([key])[key]
        for sentence in [s for s in split_sentences(paper.abstract) if len(s.split()) >= 8][:2]:
            context = [h.paper for h in retrieve(sentence, settings.k, settings=settings)]
            other = next((p for p in context if p.key != key), None)
            if other is None:
                continue
            context = [paper, *(p for p in context if p.key != key)]
            right += 1
            flagged_right += _flagged(f"{sentence} {paper.marker}", context)
            flagged_swap += _flagged(f"{sentence} {other.marker}", context)
    paraphrases = [c for c in cases if c.type == "followup"]
    flagged_para = 0
    for case in paraphrases:
        cited = " ".join(f"[arXiv:{g}]" for g in case.gold)
        context = [
            h.paper for h in retrieve(f"{case.question} {cited}", settings.k, settings=settings)
        ]
        flagged_para += _flagged(case.history[-1]["content"], context)
    return {
        "swapped citations detected": flagged_swap / max(right, 1),
        "right citations flagged": flagged_right / max(right, 1),
        "paraphrases flagged": flagged_para / max(len(paraphrases), 1),
        "sentences": float(right),
    }


def _flagged(text: str, context: list) -> bool:
    return any(s.supported is False for s in check_support(text, context))


def _all_keys(settings: Settings) -> list[str]:
    """Every paper key in the index (from its chunk ids)."""
    index = gate.get_retriever(settings).index
    got = index.call(index.collection.get, include=[])
    return sorted({cid.rsplit("#", 1)[0] for cid in got["ids"]})


def answer_metrics(cases: list[Case], settings: Settings, model: str) -> dict[str, float]:
    """Run the whole chain: gold cited, facts present, abstention, dropped citations."""
    cited_gold, answerable, facts, fact_hits, dropped, refused = 0, 0, 0, 0, 0, 0
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
        refused += answer.abstained
        cited_gold += any(p.key in case.gold for p in answer.citations)
        if case.fact:
            facts += 1
            fact_hits += case.fact.lower() in " ".join(answer.text.lower().split())
    return {
        "cites a gold paper": cited_gold / max(answerable, 1),
        "fact in answer": fact_hits / max(facts, 1),
        "false abstention": refused / max(answerable, 1),
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
    calibrate_gate: bool = False,
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
    if calibrate_gate:
        fitted = calibrate(cases, settings)
        results["calibration"] = fitted
        echo(f"\nrelevance gate refitted → {settings.relevance_model}")
        echo(f"cross-validated on {fitted['fitted_on']} tuning rows (5 folds by question):")
        echo(_table({f"cv {w}": v for w, v in fitted["cross_validated"].items()}))
    results["gate"] = gate_metrics(cases, settings)
    echo(f"\nrelevance gate at {gate.threshold(settings):.3f} (abstains below)")
    echo(_table(results["gate"]))
    results["support"] = support_metrics(cases, settings)
    echo("\nsupport check (abstract sentences; swaps cite the nearest other paper)")
    echo(_table({"support": results["support"]}))
    if answers:
        results["answers"] = answer_metrics(cases, settings, model)
        echo(f"\nanswers ({model})")
        echo(_table({model: results["answers"]}))
    echo(f"\n{time.perf_counter() - start:.1f} s")
    return results
