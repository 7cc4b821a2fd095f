"""Time to stream a long structured (JSON) answer through `qa.chain._stream_structured`.

A fake model stream yields a JSON answer of N sentences (about 25 words each, one citation)
in token-sized chunks (4 characters); the script prints the time until the whole answer has
been shown and the time of the raw stream alone. Run it from the repo root, and against
another tree to compare:

    PYTHONPATH=. python benchmarks/stream_structured.py --sentences 400
    PYTHONPATH=/path/to/other/tree python benchmarks/stream_structured.py --sentences 400
"""

from __future__ import annotations

import argparse
import json
import os
import time

from qa.chain import _stream_structured
from qa.corpus import Paper

WORDS = [
    "prompt",
    "pre-training",
    "condenses",
    "semantic",
    "information",
    "from",
    "twenty",
    "thousand",
    "visual",
    "concepts",
    "into",
    "a",
    "soft",
    "prompt",
    "that",
    "transfers",
    "to",
    "segmentation",
    "and",
    "detection",
    "tasks",
]


class FakeStream:
    """A runnable whose `.stream()` yields `raw` in `chunk`-character pieces."""

    def __init__(self, raw: str, chunk: int):
        self.raw, self.chunk = raw, chunk

    def stream(self, inputs: dict):
        for start in range(0, len(self.raw), self.chunk):
            yield self.raw[start : start + self.chunk]


def answer_json(n: int) -> str:
    sentences = [
        {
            "text": f"Sentence {i}: "
            + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(25))
            + ".",
            "cite": ["arXiv:2304.04704"],
        }
        for i in range(n)
    ]
    return json.dumps({"sentences": sentences})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=4, help="characters per streamed chunk")
    args = parser.parse_args()
    raw = answer_json(args.sentences)
    paper = Paper("2304.04704", "2304.04704", "POMP", "Prompt pre-training.")
    fake = FakeStream(raw, args.chunk)

    start = time.perf_counter()
    chunks = sum(1 for _ in fake.stream({}))
    raw_seconds = time.perf_counter() - start

    start = time.perf_counter()
    shown = "".join(_stream_structured(fake, {}, [paper], []))
    seconds = time.perf_counter() - start
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{args.sentences} sentences, {len(raw):,} JSON characters in {chunks:,} chunks: "
        f"shown in {seconds:.3f} s (raw stream {raw_seconds:.3f} s), "
        f"{shown.count('[arXiv:2304.04704]')} citations shown [load {load} on 2 cores]"
    )


if __name__ == "__main__":
    main()
