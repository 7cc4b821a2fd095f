"""Regenerate the golden set's generic `topic` rows and generic off-corpus rows (how they were
built: evals/README.md). Prints the mined phrase sample, the checks and the rows as JSON lines;
the kept phrases below were screened by hand from that sample (noun phrases naming a method,
task or field; the fresh probe's topics left out).

    python evals/generate_topics.py > /tmp/rows.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter

from bm25s.stopwords import STOPWORDS_EN

from qa import load_corpus
from qa.retrieval import stems

SEED = 11
TEMPLATES = (
    "What is {x}?",
    "Which papers use {x}?",
    "How is {x} used?",
    "Papers on {x}?",
    "How does {x} work?",
)
_ON = (
    "knowledge graphs|instruction following|artificial intelligence|sparse rewards|"
    "machine translation|image super-resolution|person re-identification|adversarial training|"
    "reward functions|lifelong learning|weight sharing|offline reinforcement learning|"
    "inductive biases|robot manipulation|named entity recognition|natural language processing|"
    "feature extraction|transfer learning|cross-lingual transfer|mathematical reasoning|"
    "distribution shift|data curation|synthetic data|out-of-distribution detection|"
    "convolutional neural networks|training stability|reinforcement learning|decision-making|"
    "latent space|link prediction|semantic segmentation|program synthesis|self-correction|"
    "multi-layer perceptron|human preference|social media|catastrophic forgetting|"
    "knowledge acquisition|labeled data|domain adaptation|self-supervision|loss functions|"
    "data collection|fine-tuning|semi-supervised learning|memory bank|word embeddings|"
    "class-incremental learning|data augmentation|metric learning|multitask learning|"
    "representation learning|computer vision|imitation learning|vision transformers|"
    "question answering"
)
_OFF = (
    "protein folding|quantum error correction|ray tracing|compiler optimization|"
    "blockchain consensus|garbage collection|mesh generation|"
    "simultaneous localization and mapping|sign language translation|weather forecasting|"
    "stock price prediction|music generation|drug discovery|power grid|cache replacement|"
    "database indexing|query optimization|packet routing|beamforming|fluid simulation|"
    "malware detection|spam filtering|fraud detection|credit scoring|traffic forecasting|"
    "crop yield prediction|epidemic modeling|seismic inversion|gene expression|"
    "single-cell sequencing|swarm robotics|satellite imagery|optical character recognition|"
    "handwriting recognition|lip reading|speaker diarization|point cloud registration|"
    "hyperparameter optimization|bayesian optimization|gaussian processes|causal discovery|"
    "homomorphic encryption|zero-knowledge proofs|formal verification|symbolic regression|"
    "physics-informed neural networks|molecular dynamics|spiking neural networks|"
    "neuromorphic hardware|source separation|video compression|crowd counting|"
    "medical report generation|legged locomotion|topic modeling|sentiment analysis|"
    "face recognition|pose estimation|anomaly detection|time series forecasting|"
    "neural architecture search|theorem proving|3d reconstruction|image compression|"
    "recommender systems"
)
ON, OFF = _ON.split("|"), _OFF.split("|")
_FILLER_TEXT = (
    "we our paper propose proposed show results using based new approach method methods "
    "model models task tasks work also can well first two however significantly existing "
    "large performance state-of-the-art art"
)


def mine(texts: dict[str, str], least: int = 3, share: float = 0.25) -> list[str]:
    """Hyphenated terms and 2-3-word runs (no stop word at either end) in at least `least`
    papers that make up at least `share` of the papers holding their rarest word."""
    stop = set(STOPWORDS_EN) | set(_FILLER_TEXT.split())
    df: Counter[str] = Counter()
    word_df: Counter[str] = Counter()
    for text in texts.values():
        low = text.lower()
        word_df.update(set(re.findall(r"[a-z][a-z0-9]*", low)))
        toks = re.findall(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*", low)
        seen = set()
        for n in (2, 3):
            for i in range(len(toks) - n + 1):
                run = toks[i : i + n]
                ends = (run[0], run[-1])
                if any(w in stop or len(w) < 3 for w in ends) or any(
                    w in stop and w != "of" for w in run
                ):
                    continue
                seen.add(" ".join(run))
        for w in toks:
            parts = w.split("-")
            if 1 < len(parts) <= 4 and all(len(x) >= 2 for x in parts) and not re.search(r"\d", w):
                seen.add(w)
        df.update(seen)

    def collocated(phrase: str) -> bool:
        rarest = min(word_df[w] for w in re.findall(r"[a-z][a-z0-9]*", phrase))
        return df[phrase] / rarest >= share

    return sorted(p for p, c in df.items() if c >= least and collocated(p))


def writes(phrase: str, text: str) -> bool:
    """The phrase in the text, hyphen or space between words, plural allowed."""
    body = r"[- ]?".join(re.escape(w) for w in re.split(r"[- ]", phrase.lower()))
    return re.search(rf"(?<![\w-]){body}(?:s|es)?(?!\w)", text) is not None


def in_stems(phrase: str, sequence: list[str]) -> bool:
    """The phrase's word stems in a row (catches "recommendation systems")."""
    want = stems(phrase)
    n = len(want)
    return any(sequence[i : i + n] == want for i in range(len(sequence) - n + 1))


def main() -> None:
    papers = load_corpus()
    texts = {(p.arxiv_id or p.key): f"{p.title}\n{p.abstract}".lower() for p in papers}
    phrases = mine(texts)
    random.seed(SEED)
    random.shuffle(phrases)
    print(f"{len(phrases)} phrases; screened sample:", phrases[:170], file=sys.stderr)
    sequences = {k: stems(t) for k, t in texts.items()}
    on = [(x, sorted(k for k, t in texts.items() if writes(x, t))) for x in ON]
    on = [(x, gold) for x, gold in on if len(gold) >= 2]
    off = [
        x
        for x in OFF
        if not any(writes(x, t) or in_stems(x, sequences[k]) for k, t in texts.items())
    ]
    print(f"{len(on)} corpus phrases, {len(off)} absent fields", file=sys.stderr)
    rng = random.Random(SEED)
    n = min(len(on), len(off))
    on, off = rng.sample(on, n), rng.sample(off, n)
    rows = [
        {"id": f"topic-{i:02d}", "type": "topic", "question": rng.choice(TEMPLATES).format(x=x)}
        | {"gold": gold, "history": []}
        for i, (x, gold) in enumerate(on, 1)
    ]
    rows += [
        {"id": f"off-{i:02d}", "type": "offcorpus", "question": rng.choice(TEMPLATES).format(x=x)}
        | {"gold": [], "history": []}
        for i, x in enumerate(off, 80)
    ]
    for row in rows:
        if rng.random() < 0.3:
            row["split"] = "heldout"
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
