"""qa.citations: every marker form is read, only context papers survive, streaming is safe."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from qa.citations import StreamGuard, render_markdown, validate
from qa.corpus import Paper

A = Paper("2306.15875", "2306.15875", "Fake the Real", "Backdoor attack on speech.")
B = Paper("2304.04704", "2304.04704", "POMP", "Prompt pre-training.")
NO_ID = Paper("hf12818dc8cd4", None, "Erase to Enhance", "Unlearning in MRI.")
CONTEXT = [A, B, NO_ID]


def test_valid_markers_are_kept_and_ordered_by_first_mention():
    result = validate("POMP works [arXiv:2304.04704]. Speech too [arXiv:2306.15875].", CONTEXT)
    assert [p.key for p in result.citations] == ["2304.04704", "2306.15875"]
    assert "[arXiv:2304.04704]" in result.text and not result.dropped


def test_near_miss_forms_are_normalised():
    text = "One (arXiv: 2306.15875v2). Two [2304.04704]. Both [arXiv:2306.15875, arXiv:2304.04704]."
    result = validate(text, CONTEXT)
    assert result.text == (
        "One [arXiv:2306.15875]. Two [arXiv:2304.04704]. Both [arXiv:2306.15875][arXiv:2304.04704]."
    )
    assert [p.key for p in result.citations] == ["2306.15875", "2304.04704"]


def test_fake_and_out_of_context_ids_are_removed_and_recorded():
    text = (
        "Invented [arXiv:9999.99999]. Elsewhere arXiv:2401.06121 says so. Real [arXiv:2306.15875]."
    )
    result = validate(text, CONTEXT)
    assert "9999.99999" not in result.text and "2401.06121" not in result.text
    assert result.dropped == ["9999.99999", "2401.06121"]
    assert [p.key for p in result.citations] == ["2306.15875"]
    assert "Invented." in result.text  # the gap a removed marker leaves is tidied


def test_ref_markers_for_papers_without_id():
    result = validate("MRI unlearning [ref:hf12818dc8cd4]. Fake [ref:h000000000000].", CONTEXT)
    assert [p.key for p in result.citations] == ["hf12818dc8cd4"]
    assert result.dropped == ["h000000000000"]


def test_render_markdown_links_to_arxiv():
    out = render_markdown("See [arXiv:2306.15875].")
    assert out == "See [arXiv:2306.15875](https://arxiv.org/abs/2306.15875)."
    assert render_markdown(out) == out  # idempotent


def _stream(text: str, cuts: list[int]) -> str:
    guard = StreamGuard(CONTEXT)
    pieces, last = [], 0
    for cut in [*sorted(set(cuts)), len(text)]:
        pieces += list(guard.feed(text[last:cut]))
        last = cut
    pieces += list(guard.flush())
    return "".join(pieces)


@given(st.lists(st.integers(min_value=0, max_value=120), max_size=12))
def test_stream_guard_equals_validating_the_whole(cuts):
    """However the model's stream is chunked, what is shown equals the validated whole."""
    text = (
        "Speech backdoors [arXiv:2306.15875]. A fake one [arXiv:9999.99999] and "
        "(arXiv:2304.04704) plus arXiv:1234.56789 at the end [ref:hf12818dc8cd4]."
    )
    shown = _stream(text, [c for c in cuts if c < len(text)])
    assert " ".join(shown.split()) == validate(text, CONTEXT).text
    assert "9999.99999" not in shown and "1234.56789" not in shown


def test_stream_guard_never_shows_a_partial_fake_marker():
    guard = StreamGuard(CONTEXT)
    shown = "".join(guard.feed("Claim [arXiv:9999.9"))
    assert "9999" not in shown
    shown += "".join(guard.feed("9999] done.")) + "".join(guard.flush())
    assert "9999" not in shown and shown.endswith("done.")
