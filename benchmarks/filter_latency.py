"""What a filter costs `qa.retrieve`, and that every hit satisfies it, on the bundled seeds.

The 517 seed papers are indexed in a temp dir (vector cache: seconds); the golden questions
are asked with no filter and with date filters (the seeds carry their ID's month). Printed:
warm p50/p95 per filter, the first call of each filter (it asks Chroma which chunks match,
for the keyword side; later calls reuse that), hits returned per question, and how many hits
break the filter (must be 0).

Usage: python benchmarks/filter_latency.py [--k 5]
"""

from __future__ import annotations

import argparse
import os
import time

from _common import latency_summary, line, questions, temp_dir

FILTERS = [
    {},
    {"since": "2024-01-01"},
    {"since": "2023-01-01", "until": "2023-12-31"},
    {"until": "2022-06-30"},
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    with temp_dir("qa-filter-latency-") as tmp:
        os.environ["QA_PERSIST_DIR"] = str(tmp / "store")
        os.environ.pop("QA_CHROMA_URL", None)
        import qa
        from qa.filters import Filters
        from qa.ingest import build_index

        build_index(progress=False)
        asked = questions()
        qa.retrieve(asked[0], k=args.k)  # warm: keyword index, model
        for given in FILTERS:
            flt = Filters.make(**given)
            start = time.perf_counter()
            qa.retrieve(asked[0], k=args.k, **given)
            first = time.perf_counter() - start
            seconds, counts, broken = [], [], 0
            for question in asked:
                start = time.perf_counter()
                hits = qa.retrieve(question, k=args.k, **given)
                seconds.append(time.perf_counter() - start)
                counts.append(len(hits))
                broken += sum(not flt.matches(h.paper) for h in hits)
            label = flt.describe() or "no filter"
            line(f"{label[:42]}", latency_summary(seconds))
            line(
                "  first call, hits/question, broken",
                f"{first * 1000:.0f} ms, min {min(counts)} mean {sum(counts) / len(counts):.2f}, "
                f"{broken} hits outside the filter",
            )


if __name__ == "__main__":
    main()
