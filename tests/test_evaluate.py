"""qa.evaluate: metrics are computed right, and `qa eval` prints every figure it promises."""

from __future__ import annotations

import json

from qa.cli import main
from qa.evaluate import GOLDEN, load_golden, reword, run_eval

pytest_plugins = ["chroma_server"]


def test_golden_set_is_well_formed():
    cases = load_golden(GOLDEN)
    assert len(cases) >= 60
    kinds = {c.type for c in cases}
    assert {"paraphrase", "method", "fact", "multi", "offcorpus", "followup"} <= kinds
    assert all(c.gold for c in cases if c.type not in ("offcorpus", "chitchat"))
    assert all(c.history for c in cases if c.type == "followup")


def test_golden_set_keeps_a_held_out_part_and_wordings():
    cases = load_golden(GOLDEN)
    heldout = [c for c in cases if c.split == "heldout"]
    assert len(heldout) >= 0.2 * len(cases)
    assert {c.type for c in heldout} >= {"offcorpus", "paraphrase", "method"}
    assert sum(c.type == "offcorpus" for c in cases) >= 40
    assert {c.wording for c in cases} == {"plain", "polite", "terse"}


def test_reword_keeps_the_question_and_changes_the_frame():
    q = "How does ATSS pick positive anchors?"
    assert reword(q, "plain") == q
    polite = reword(q, "polite", 0)
    assert polite.startswith("Hi!") and "how does ATSS pick positive anchors?" in polite
    assert reword(q, "terse") == "ATSS pick positive anchors"


def test_run_eval_prints_all_figures_on_a_small_set(seeds, tmp_path, capsys):
    rows = [c for c in GOLDEN.read_text().splitlines() if c.strip()]
    wanted = ("para-01", "meth-01", "fact-01", "multi-01", "off-01", "follow-01", "chat-01")
    small = [r for r in rows if json.loads(r)["id"].startswith(wanted)]
    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(small), encoding="utf-8")
    results = run_eval(answers=True, golden=path)
    out = capsys.readouterr().out
    for label in (
        "keyword",
        "dense",
        "hybrid",
        "R@1",
        "MRR",
        "multi R@10",
        "relevance gate",
        "ROC AUC",
        "false abstention",
        "cites a gold paper",
        "fact in answer",
        "dropped citations",
    ):
        assert label in out
    hybrid = results["retrieval"]["hybrid"]
    assert all(0.0 <= v <= 1.0 for v in hybrid.values())
    assert results["answers"]["dropped citations"] == 0.0


def test_resolve_without_network_says_so_and_changes_nothing(monkeypatch, tmp_path, capsys):
    seed = tmp_path / "one.jsonl"
    seed.write_text(
        '{"title": "A Paper Nobody Indexed", "abstract": "We study things '
        'that nobody has indexed before in any table."}\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("QA_ARXIV_API_URL", "http://127.0.0.1:9/api/query?{}")
    from qa.config import get_settings

    get_settings.cache_clear()
    assert main(["resolve", str(seed)]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert not get_settings().resolve_cache_path.exists()
