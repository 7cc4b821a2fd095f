"""Answer or abstain: a small logistic model over features of both retrieval channels.

A fixed line on `0.5·cosine + 0.5·coverage` refused short acronym questions ("What is ATSS?":
low cosine) and polite ones (filler lowers coverage), and answered off-corpus questions that
share half their words with some paper. The features here look at *which* words matched: the
question's rare words and named methods (acronyms) either appear in a retrieved paper or not.
The weights are fitted to the golden set by `qa eval --calibrate` (numpy Newton steps on an
L2-penalised logistic loss: scikit-learn is not a dependency and this is 30 lines) and kept in
`qa/relevance.json`; the operating point is chosen on cross-validated, held-out predictions.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from qa.config import PROJECT_ROOT, Settings, get_settings
from qa.corpus import Paper
from qa.retrieval import Hit, get_retriever, stems
from qa.support import split_sentences
from qa.wording import base_form, listed_words, normalize_question, synonym_table

MODEL_PATH = PROJECT_ROOT / "qa" / "relevance.json"
FEATURES = (
    "cosine",  # best dense similarity among the hits
    "coverage",  # best IDF-weighted share of the question's words in one chunk (title + text)
    "rare_found",  # best share of the question's rare words found in one paper
    "rare_missing",  # rarity of the rarest question word that paper lacks (0..1)
    "unseen",  # share of the question's words the corpus never uses
    "title",  # best share of the question's words in one title
    "acronym_found",  # rarity of the rarest named method (ATSS, Kosmos-2) a top paper has
    "acronym_missing",  # rarity of the rarest named method no top paper has
    "missing",  # how many of the question's less common words the best paper lacks
    "margin",  # fused-score gap between the first and second paper
    "score",  # fused score of the first paper
    "rest_first",  # dense similarity of the words the first paper lacks to that paper
    "rest_other",  # ... and to the best other hit
    "topic_other",  # a required rare word the first paper lacks that names another hit's topic
    "topic_gap",  # ... how much closer it reads to a sentence of another hit than of the first
    "phrase",  # best share of the question's adjacent word pairs one top paper writes adjacent
)
TOP = 3  # papers whose text is read for the word features
RARE = 0.5  # a word is rare when its idf is at least this share of the largest idf
UNCOMMON = 0.3  # ... and less common (counted by `missing`) from this share
L2 = 10.0  # ridge penalty: ~330 rows, correlated features (chosen over 1 and 3 cross-validated)
TOPIC_WORDS = 4  # the rarest words `topic_other` embeds (one batch with the rest phrase)
SENTENCE_CACHE = 2048  # papers whose sentence vectors are kept (~10 x 384 float32: ~30 MB)
# The operating point: at most 1% of cross-validated answerable rows below it (the floor is 2%).
# At 0.0 one generic question whose hits never name its topic ("Which papers use
# self-supervision?": self-training papers retrieved) set the line for all, and off-corpus
# abstention fell to 0.81-0.86 cross-validated.
MAX_FALSE_ABSTENTION = 0.01
# The words questions are framed with: rare in abstracts, so as an idf-weighted word "what"
# would weigh as much as a method name. Not part of a question's content here.
QUESTION_WORDS = (
    "what which how why who whom whose when where does did do can could would me"
    " paper papers work use used using"  # "Which papers use X?", "How does X work?"
)
_CLAUSE = re.compile(r"[.,;:!?()\[\]]\s|\n")
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_ACRONYM = re.compile(
    r"(?<![\w-])(?:[A-Za-z]*[A-Z][A-Za-z]*[A-Z0-9][\w-]*|[A-Za-z]+-\d[\w-]*|[A-Z]\d\w*)(?![\w-])"
)


@dataclass
class RelevanceModel:
    """Standardised features → logistic probability that the hits answer the question."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    threshold: float
    meta: dict = field(default_factory=dict)

    def probability(self, rows: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(rows) - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    def save(self, path: Path = MODEL_PATH) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")
        load_model.cache_clear()


@lru_cache(maxsize=4)
def load_model(path: Path = MODEL_PATH) -> RelevanceModel:
    """The fitted model (`qa eval --calibrate` writes it)."""
    model = RelevanceModel(**json.loads(path.read_text(encoding="utf-8")))
    if tuple(model.features) != FEATURES:
        raise ValueError(f"{path} was fitted on other features; run `qa eval --calibrate`.")
    return model


# ---------------------------------------------------------------- features


def acronyms(question: str) -> list[str]:
    """Named methods and models: words with inner capitals or digits (ATSS, Kosmos-2, DyLoRA)."""
    words = [w.rstrip("-") for w in _ACRONYM.findall(question)]
    return list(dict.fromkeys(w for w in words if len(w) > 1))


def _paper_text(hit: Hit) -> str:
    return f"{hit.paper.title}\n{hit.paper.abstract}"


def _chunk_text(hit: Hit) -> str:
    """The best-matching chunk as the index holds it (title prepended)."""
    return f"{hit.paper.title}\n{hit.snippet}"


@lru_cache(maxsize=1)
def _synonyms() -> dict[str, str]:
    return synonym_table(lambda words: [s for w in words for s in stems(w)[:1]])


def _words(text: str) -> list[str]:
    """Index tokens with synonyms folded ("choose" and "select" are one word here)."""
    table = _synonyms()
    return [table.get(s, s) for s in stems(text)]


def _idf(word: str, idf: dict[str, float], top: float) -> float:
    """A folded synonym takes the idf of its most common member (it is that common)."""
    if word in idf:
        return idf[word]
    members = [s for s, c in _synonyms().items() if c == word and s in idf]
    return min((idf[s] for s in members), default=top)


def _share(weight: dict[str, float], found: set[str]) -> float:
    total = sum(weight.values())
    return sum(w for s, w in weight.items() if s in found) / total if total else 1.0


def features(
    question: str, hits: list[Hit], idf: dict[str, float], settings: Settings
) -> np.ndarray:
    """The FEATURES of one question and its hits (see the tuple for what each measures)."""
    text = _known_forms(normalize_question(question), idf)
    framing = set(stems(QUESTION_WORDS))
    sequence = [w for w in _words(text) if w not in framing and not _UNSPACED.search(w)]
    words = set(sequence)
    top = max(idf.values(), default=1.0) or 1.0
    weight = {w: _idf(w, idf, top) for w in words}
    papers = [set(_words(_paper_text(h))) for h in hits[:TOP]]
    titles = [set(_words(h.paper.title)) for h in hits[:TOP]]
    scores = [h.score for h in hits]
    row = {
        "cosine": max((h.dense for h in hits), default=0.0),
        "coverage": max((_share(weight, set(_words(_chunk_text(h)))) for h in hits), default=0.0),
        **_rare_words(weight, papers, top),
        "unseen": sum(_idf(w, idf, -1.0) < 0 for w in words) / len(words) if words else 0.0,
        "title": max((_share(weight, t) for t in titles), default=0.0) if words else 0.0,
        **_named_methods(text, hits[:TOP], idf, top),
        "margin": scores[0] - scores[1] if len(scores) > 1 else (scores[0] if scores else 0.0),
        "score": scores[0] if scores else 0.0,
        **_meaning(text, framing, hits, weight, top, settings),
        "phrase": _phrase(sequence, [_paper_text(h) for h in hits], weight),
    }
    return np.array([row[name] for name in FEATURES], dtype=float)


def _known_forms(text: str, idf: dict[str, float]) -> str:
    """Irregular past forms the corpus never uses, in the base form it does ("How can LLMs be
    jailbroken?" asks about jailbreaks)."""

    def fold(match: re.Match) -> str:
        word = match.group(0)
        base = base_form(word)
        known = lambda w: all(s in idf for s in stems(w))  # noqa: E731
        return base if base and not known(word) and known(base) else word

    return re.sub(r"[A-Za-z]+", fold, text)


def _phrase(sequence: list[str], texts: list[str], weight: dict[str, float]) -> float:
    """Does one paper name the question's topic as the question words it? "image compression"
    has both words in a model-compression abstract, never side by side; "knowledge
    distillation" is a term the paper uses. Pairs weigh by their commoner word ("language
    models" says little); a question with one content word has no pair to miss (1.0). Read
    in every hit, not only the top papers: a generic topic's first paper may use a near form
    ("self-trained")."""
    pairs = {(a, b): min(weight[a], weight[b]) for a, b in pairwise(sequence) if a != b}
    if not pairs:
        return 1.0
    found = [_pairs(t) for t in texts] or [set()]
    total = sum(pairs.values()) or 1.0
    return max(sum(w for p, w in pairs.items() if p in have) for have in found) / total


def _pairs(text: str) -> set[tuple[str, str]]:
    """Adjacent word pairs within a clause ("… an image. Compression …" is no pair)."""
    return {p for part in _CLAUSE.split(text) for p in pairwise(_words(part))}


def _rare_words(weight: dict[str, float], papers: list[set[str]], top: float) -> dict[str, float]:
    """rare_found, rare_missing and missing: does one paper hold the question's rarer words?"""
    if not papers:
        return {"rare_found": 0.0, "rare_missing": 1.0, "missing": 0.0}
    rare = {w: v for w, v in weight.items() if v >= RARE * top}
    rare_found, rare_missing = 1.0, 0.0
    if rare:
        best = max(papers, key=lambda found: _share(rare, found))
        rare_found = _share(rare, best)
        rare_missing = max((v / top for w, v in rare.items() if w not in best), default=0.0)
    closest = max(papers, key=lambda found: _share(weight, found))
    uncommon = [w for w, v in weight.items() if v >= UNCOMMON * top]
    missing = float(sum(w not in closest for w in uncommon))
    return {"rare_found": rare_found, "rare_missing": rare_missing, "missing": missing}


def _meaning(
    text: str,
    framing: set[str],
    hits: list[Hit],
    weight: dict[str, float],
    top: float,
    settings: Settings,
) -> dict[str, float]:
    """The question's words the first paper lacks, compared by meaning with the hits' chunks
    (stored vectors; one embedding batch for the phrase and the words).

    rest_first / rest_other: those words as one phrase, against the first paper and the best
    other hit. A paraphrase's leftover words still mean that paper's topic ("secretly
    implanting" ~ backdoor); a qualifier the corpus never joins to it does not ("unlearned" in
    a question on federated unlearning, whose first paper is about federated learning).

    topic_other: each rare, required word the first paper lacks, alone, against the other
    hits: rarity × best cosine. Two topics the corpus covers apart ("sparse autoencoders" +
    "protein") retrieve a paper for each; the word the first paper misses is what another hit
    is about. A paraphrase's or a framing word ("done", "themselves") is no hit's topic, and a
    word the question lists as one alternative ("hard negatives, in-batch negatives, ...") is
    not required of one paper.

    topic_gap: the same words against each hit's sentences (title and abstract sentences,
    embedded once per paper and cached): rarity × (best sentence of another hit − best
    sentence of the first paper). One sentence about proteins in another abstract stands out
    where that whole abstract's vector blurs it; a paraphrase ("recognition" for the first
    paper's "speech classification") reads nearly as close to the first paper."""
    if not hits:
        return {"rest_first": 0.0, "rest_other": 0.0, "topic_other": 0.0, "topic_gap": 0.0}
    sequence = _words(_paper_text(hits[0]))
    have = set(sequence)
    rest, topics = [], {}
    listed, stop = listed_words(text), frozenset(STOPWORDS_EN)
    for token in re.findall(r"[\w'-]+", text):
        found = _words(token)
        if not found or set(found) & framing or _UNSPACED.search(token):
            continue  # like the other features: unspaced scripts aside
        if set(found) <= have and _joined(found, sequence):
            continue
        if max(weight.get(w, top) for w in found) < UNCOMMON * top:
            continue  # a common word ("papers", "used", "work") names no topic to miss
        rest.append(token)
        lacking = [weight.get(w, 0.0) / top for w in found if w not in have]
        word = token.lower()
        if lacking and word not in stop and word not in listed and max(lacking) >= UNCOMMON:
            topics[word] = max(max(lacking), topics.get(word, 0.0))
    if not rest:
        return {"rest_first": 1.0, "rest_other": 0.0, "topic_other": 0.0, "topic_gap": 0.0}
    words = sorted(topics, key=lambda w: -topics[w])[:TOPIC_WORDS]
    retriever = get_retriever(settings)
    vectors = np.asarray(retriever.index.embeddings.embed_documents([" ".join(rest), *words]))
    chunks = {h.paper.key: _chunk_ids(retriever, h.paper.key) for h in hits}
    stored = retriever.vectors([c for ids in chunks.values() for c in ids])
    # cosine of each embedded text (rows) with each hit's best chunk (columns)
    best = np.zeros((len(vectors), len(hits)), dtype=np.float32)
    for j, hit in enumerate(hits):
        ids = [c for c in chunks[hit.paper.key] if c in stored]
        if ids:
            best[:, j] = (vectors @ np.stack([stored[c] for c in ids]).T).max(axis=1)
    others = best[:, 1:].max(axis=1) if len(hits) > 1 else np.zeros(len(vectors))
    topic = max((topics[w] * float(others[i + 1]) for i, w in enumerate(words)), default=0.0)
    gap = 0.0
    if words and len(hits) > 1:
        sentences = _sentence_vectors(retriever.index.embeddings, [h.paper for h in hits])
        near = [(vectors[1:] @ found.T).max(axis=1) for found in sentences]
        apart = np.max(near[1:], axis=0) - near[0]
        gap = max(topics[w] * float(apart[i]) for i, w in enumerate(words))
    return {
        "rest_first": float(best[0, 0]),
        "rest_other": float(others[0]),
        "topic_other": topic,
        "topic_gap": gap,
    }


_sentences: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()
_sentences_lock = threading.Lock()


def _sentence_vectors(embeddings, papers: list[Paper]) -> list[np.ndarray]:
    """Each paper's title and abstract sentences, embedded: the papers not yet cached in one
    batch, then kept (LRU per embedding model and paper: the same papers come back for many
    questions)."""
    model = getattr(embeddings, "model_id", type(embeddings).__name__)
    keys = [(model, p.key, hash(p.abstract)) for p in papers]
    with _sentences_lock:
        known = {k: _sentences[k] for k in keys if k in _sentences}
        for k in known:
            _sentences.move_to_end(k)
    todo = {k: p for k, p in zip(keys, papers, strict=True) if k not in known}
    texts = {
        k: [t for t in (p.title, *split_sentences(p.abstract)) if t] or [p.key]
        for k, p in todo.items()
    }
    flat = [t for k in texts for t in texts[k]]
    vectors = np.asarray(embeddings.embed_documents(flat), dtype=np.float32) if flat else None
    at = 0
    for k, own in texts.items():
        known[k] = vectors[at : at + len(own)]
        at += len(own)
    with _sentences_lock:
        for k in todo:
            _sentences[k] = known[k]
        while len(_sentences) > SENTENCE_CACHE:
            _sentences.popitem(last=False)
    return [known[k] for k in keys]


def _joined(parts: list[str], sequence: list[str]) -> bool:
    """Does the paper use a hyphenated term as one ("self-training": "self" and "train" in
    "self-supervised models ... trained" is another term), adjacent or written as one word?"""
    if len(parts) < 2:
        return True
    n = len(parts)
    return "".join(parts) in sequence or any(
        sequence[i : i + n] == parts for i in range(len(sequence) - n + 1)
    )


def _chunk_ids(retriever, key: str) -> list[str]:
    """A paper's chunk ids ("{key}#0", "#1", … as the index numbers them)."""
    known = retriever.keyword_index.row_of
    ids = []
    while f"{key}#{len(ids)}" in known:
        ids.append(f"{key}#{len(ids)}")
    return ids


def _named_methods(
    text: str, hits: list[Hit], idf: dict[str, float], top: float
) -> dict[str, float]:
    """acronym_found / acronym_missing, each the rarity of the rarest such name."""
    named = acronyms(text)
    lowered = [_paper_text(h).lower() for h in hits]
    found = [a for a in named if any(_has_word(t, a.lower()) for t in lowered)]
    rarity = {a: _rarity(a, idf, top) for a in named}  # "ATSS" says more than "LLM"
    return {
        "acronym_found": max((rarity[a] for a in found), default=0.0),
        "acronym_missing": max((rarity[a] for a in named if a not in found), default=0.0),
    }


def _rarity(word: str, idf: dict[str, float], top: float) -> float:
    """0..1: how rare a named method's words are in the corpus (unseen: 1)."""
    parts = stems(word)
    return max((idf.get(s, top) / top for s in parts), default=0.0)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def corpus_idf(settings: Settings) -> dict[str, float]:
    """Stem → idf of the keyword index the hits came from (refreshed like a search would)."""
    retriever = get_retriever(settings)
    with retriever.lock:
        retriever.keyword_index.refresh(retriever.index)
        return retriever.keyword_index.idf


# ---------------------------------------------------------------- the gate


def relevance(question: str, hits: list[Hit], settings: Settings | None = None) -> float:
    """Probability that the hits answer the question (1.0 when a named paper was found)."""
    settings = settings or get_settings()
    if not hits:
        return 0.0
    if hits[0].pinned:
        return 1.0
    model = load_model(settings.relevance_model)
    return float(model.probability(features(question, hits, corpus_idf(settings), settings))[0])


def threshold(settings: Settings) -> float:
    """`QA_ABSTAIN_THRESHOLD` if set, else the fitted operating point."""
    if settings.abstain_threshold is not None:
        return settings.abstain_threshold
    return load_model(settings.relevance_model).threshold


def is_relevant(question: str, hits: list[Hit], settings: Settings | None = None) -> bool:
    """Answer (True) or abstain (False)."""
    settings = settings or get_settings()
    return relevance(question, hits, settings) >= threshold(settings)


# ---------------------------------------------------------------- fitting


def fit(rows: np.ndarray, labels: np.ndarray, l2: float = L2) -> RelevanceModel:
    """L2-penalised logistic regression by Newton's method on standardised features."""
    mean = rows.mean(axis=0)
    scale = rows.std(axis=0)
    scale[scale == 0] = 1.0
    x = np.hstack([(rows - mean) / scale, np.ones((len(rows), 1))])
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - labels) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return RelevanceModel(
        list(FEATURES), mean.tolist(), scale.tolist(), w[:-1].tolist(), float(w[-1]), 0.5
    )


def out_of_fold(
    rows: np.ndarray, labels: np.ndarray, groups: list[str], folds: int = 5
) -> np.ndarray:
    """Cross-validated probabilities: each question (all its wordings) is predicted by a model
    fitted without it."""
    names = sorted(set(groups))
    fold_of = {g: i % folds for i, g in enumerate(names)}
    fold = np.array([fold_of[g] for g in groups])
    probs = np.zeros(len(rows))
    for f in range(folds):
        test = fold == f
        if test.any() and (~test).any():
            probs[test] = fit(rows[~test], labels[~test]).probability(rows[test])
    return probs


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def operating_point(
    probs: np.ndarray, labels: np.ndarray, max_false: float = MAX_FALSE_ABSTENTION
) -> float:
    """The threshold that abstains on the most off-corpus questions while refusing at most
    `max_false` of the answerable ones, set midway into the gap below it (an answerable
    question scoring just under the fitted line is still answered)."""
    answerable = np.sort(probs[labels == 1])
    if not len(answerable):
        return 0.5
    highest = float(answerable[math.floor(max_false * len(answerable))])
    below = probs[(labels == 0) & (probs < highest)]
    return (float(below.max()) + highest) / 2 if len(below) else highest - 1e-6


def rates(probs: np.ndarray, labels: np.ndarray, cut: float) -> dict[str, float]:
    """False abstentions (answerable refused) and abstentions on off-corpus questions."""
    abstain = probs < cut
    return {
        "false abstention": float(abstain[labels == 1].mean()) if (labels == 1).any() else 0.0,
        "off-corpus abstained": float(abstain[labels == 0].mean()) if (labels == 0).any() else 0.0,
    }
