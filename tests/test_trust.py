"""Issue 11: the relevance gate, question wording, follow-ups on the papers under discussion,
questions that name a paper by ID, the per-sentence support check and clean stub answers.

End-to-end tests run on the bundled seeds (real Chroma, the offline stub, and a real
`ChatOpenAI` against the loopback fake server for the real-model path)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import qa
from qa import relevance
from qa.chain import ask
from qa.cli import main
from qa.config import get_settings
from qa.corpus import Paper
from qa.evaluate import GOLDEN
from qa.retrieval import stems
from qa.support import check_support, mark_weak, split_sentences
from qa.wording import (
    american_spelling,
    base_form,
    listed_words,
    normalize_question,
    refers_back,
    split_scripts,
)

pytest_plugins = ["fake_openai", "chroma_server"]

BACKDOOR = "Which papers study backdoor attacks on speech models?"


def _ids(answer) -> list[str]:
    return [p.arxiv_id for p in answer.citations]


def _turns(question: str, answer) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]


# ---------------------------------------------------------------- wording


@pytest.mark.parametrize(
    ("asked", "meant"),
    [
        (
            "Hi! I'm new to this field, could you please help me understand: What is ATSS?",
            "What is ATSS?",
        ),
        ("Could you please explain to me in simple terms what POMP is?", "What POMP is?"),
        (
            "Hello there, can you tell me which papers study RETRO? Thanks!",
            "Which papers study RETRO?",
        ),
        ("I'd like to know more about LoRA, please", "LoRA"),
        ("I would like to know how RETRO works. Please explain briefly.", "How RETRO works"),
        ("hey can u tell me about born again networks", "Born again networks"),
    ],
)
def test_politeness_is_removed_and_the_content_kept(asked, meant):
    assert normalize_question(asked) == meant


def test_normalising_keeps_plain_questions_and_bare_greetings():
    assert normalize_question("How does ATSS pick anchors?") == "How does ATSS pick anchors?"
    assert normalize_question("history of RL?") == "History of RL?"  # "hi" is not a greeting here
    assert normalize_question("hello") == "hello"


def test_scripts_are_split_so_latin_terms_are_tokens():
    assert split_scripts("什么是POMP？") == "什么是 POMP？"
    assert "pomp" in stems("什么是POMP？")
    assert "pomp" in stems("POMPとは何ですか")


def test_british_spellings_fold_into_american_ones():
    assert american_spelling("initialise optimised colour") == "initialize optimized color"
    assert stems("initialise") == stems("initialize")


def test_refers_back():
    assert refers_back("How do they create the triggers?")
    assert refers_back("What results did the authors report?")
    assert not refers_back("How does RETRO retrieve text?")


# ---------------------------------------------------------------- the relevance model


def _separable(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    rows = rng.normal(size=(n, len(relevance.FEATURES)))
    rows[:, 0] += 3 * labels  # feature 0 carries the label
    return rows, labels


def test_fit_learns_a_separating_weight_and_saves_and_loads(tmp_path):
    rows, labels = _separable()
    model = relevance.fit(rows, labels)
    assert model.weights[0] > 0 and abs(model.weights[0]) == max(map(abs, model.weights))
    probs = model.probability(rows)
    assert relevance.roc_auc(probs, labels) > 0.95
    path = tmp_path / "gate.json"
    model.save(path)
    loaded = relevance.load_model(path)
    assert np.allclose(loaded.probability(rows), probs)


def test_a_model_fitted_on_other_features_is_refused(tmp_path):
    rows, labels = _separable()
    model = relevance.fit(rows, labels)
    model.features = ["cosine"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(model.__dict__))
    with pytest.raises(ValueError, match="qa eval --calibrate"):
        relevance.load_model(path)


def test_cross_validation_predicts_each_group_without_it():
    rows, labels = _separable(90)
    groups = [f"q{i // 3}" for i in range(90)]  # three wordings per question
    oof = relevance.out_of_fold(rows, labels, groups)
    assert relevance.roc_auc(oof, labels) > 0.9
    # a label-free copy of the data gives chance-level held-out predictions
    rng = np.random.default_rng(1)
    noise = relevance.out_of_fold(rng.normal(size=rows.shape), labels, groups)
    assert relevance.roc_auc(noise, labels) < 0.75


def test_roc_auc_and_operating_point():
    labels = np.array([1, 1, 1, 1, 0, 0])
    assert relevance.roc_auc(np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1]), labels) == 1.0
    assert relevance.roc_auc(np.array([0.5] * 6), labels) == 0.5
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    cut = relevance.operating_point(probs, labels, max_false=0.0)
    assert 0.5 < cut < 0.6  # midway between the off-corpus 0.5 and the lowest answerable 0.6
    assert relevance.rates(probs, labels, cut) == {
        "false abstention": 0.0,
        "off-corpus abstained": 1.0,
    }


def test_shipped_model_matches_the_features():
    model = relevance.load_model(relevance.MODEL_PATH)
    assert tuple(model.features) == relevance.FEATURES
    assert 0.0 < model.threshold < 1.0
    assert model.meta["fitted_on"] > 100


@pytest.mark.parametrize(
    "question",
    [
        "What is ATSS?",
        "Tell me about Kosmos-2",
        "Could you please explain to me in simple terms what POMP is?",
        "Hi! I'm new to this field, could you please help me understand how RETRO uses retrieval?",
    ],
)
def test_short_and_polite_questions_are_answered(seeds, question):
    answer = ask(question)
    assert not answer.abstained, answer.text
    assert answer.citations


def test_off_corpus_question_sharing_vocabulary_abstains(seeds):
    answer = ask("How is hard-negative mining used to train speaker verification models?")
    assert answer.abstained


@pytest.mark.parametrize(
    "question",
    [  # each topic is in the corpus, no abstract joins them (checked by co-occurrence search)
        "Can diffusion models be used for speaker verification?",
        "What mixture-of-experts methods are used for image segmentation?",
    ],
)
def test_off_corpus_question_joining_two_covered_topics_abstains(seeds, question):
    assert ask(question).abstained


def _writes(phrase: str, paper: Paper) -> bool:
    """Does the paper's title or abstract write the phrase (hyphen or space, plural s)?"""
    body = r"[- ]?".join(re.escape(w) for w in re.split(r"[- ]", phrase.lower()))
    pattern = rf"(?<![\w-]){body}s?(?!\w)"
    return re.search(pattern, f"{paper.title} {paper.abstract}".lower()) is not None


def _in_corpus(phrase: str) -> int:
    return sum(_writes(phrase, p) for p in qa.load_corpus())


@pytest.mark.parametrize(
    "question", ["What is person re-identification?", "Papers on imitation learning?"]
)
def test_generic_question_on_a_corpus_phrase_is_answered(seeds, question):
    """Issue 11's "refuses plain questions": a short topic question whose phrase several
    abstracts use is answered from a paper that uses it."""
    phrase = question.removeprefix("What is ").removeprefix("Papers on ").rstrip("?")
    assert _in_corpus(phrase) >= 2
    answer = ask(question)
    assert not answer.abstained, answer.text
    assert any(_writes(phrase, p) for p in answer.citations)


@pytest.mark.parametrize(
    "question", ["What is protein folding?", "How does weather forecasting work?"]
)
def test_generic_question_on_an_absent_field_abstains(seeds, question):
    """The same templates on a field no abstract writes: refused, though each word alone
    ("protein", "folding", "forecasting") occurs in the corpus."""
    phrase = question.removeprefix("What is ").removeprefix("How does ").split(" work")[0]
    assert _in_corpus(phrase.rstrip("?")) == 0
    assert ask(question).abstained


def test_phrase_counts_adjacent_pairs_within_a_clause():
    """An abstract with "image" and "compression" only across a full stop does not write the
    phrase; a one-word question has no pair to miss."""
    weight = {"imag": 1.0, "compress": 1.0}
    sequence = ["imag", "compress"]
    assert relevance._phrase(sequence, ["We compress images. Compression of weights."], weight) == 0
    assert relevance._phrase(sequence, ["Learned image compression at low rates."], weight) == 1
    assert relevance._phrase(["imag"], ["no match"], {"imag": 1.0}) == 1.0


def test_irregular_forms_the_corpus_lacks_are_folded():
    assert base_form("jailbroken") == "jailbreak"
    assert base_form("rewritten") == "rewrite"
    assert base_form("known") == "know"
    assert base_form("token") is None and base_form("trained") is None
    idf = {s: 1.0 for s in stems("jailbreak attacks known")}
    assert relevance._known_forms("How are LLMs jailbroken?", idf) == "How are LLMs jailbreak?"
    # a form the corpus itself uses is kept
    assert relevance._known_forms("What is known?", idf) == "What is known?"


def test_words_the_first_paper_lacks_are_compared_by_meaning(seeds):
    """The qualifier a federated-learning paper lacks ("unlearned") reads closer to the
    unlearning papers than to it; a question the first paper covers word for word has no rest."""
    settings = get_settings()
    idf = relevance.corpus_idf(settings)
    names = list(relevance.FEATURES)

    def rest(question: str) -> tuple[float, float]:
        hits = qa.retrieve(question, settings.k)
        row = relevance.features(question, hits, idf, settings)
        return row[names.index("rest_first")], row[names.index("rest_other")]

    first, other = rest(
        "How can a client's data be unlearned from a model trained with federated learning?"
    )
    assert first < other
    assert rest("What is ATSS?") == (1.0, 0.0)


def test_listed_alternatives_are_not_required_words():
    listed = listed_words(
        "Which papers study how to choose negative examples (hard negatives, in-batch "
        "negatives) when training dense retrievers, neural rankers or text embedding models?"
    )
    assert {"hard", "in-batch", "rankers", "text"} <= listed
    assert not {"choose", "negative", "examples", "training"} & listed
    assert {"solubility", "toxicity"} <= listed_words("Properties such as solubility or toxicity?")
    assert {"backdoor", "data-poisoning"} <= listed_words("Backdoor or data-poisoning attacks?")
    assert not listed_words("How do mixture-of-experts models scale multilingual speech models?")


def _feature(question: str, name: str) -> float:
    settings = get_settings()
    hits = qa.retrieve(question, settings.k)
    row = relevance.features(question, hits, relevance.corpus_idf(settings), settings)
    return float(row[list(relevance.FEATURES).index(name)])


def _topic_other(question: str) -> float:
    return _feature(question, "topic_other")


def test_a_required_word_another_hit_is_about_counts_against_the_first_paper(seeds):
    """'federated' is what other hits are about, not the backdoor-defence paper ranked first;
    offered as an example it is not required of that paper; a question its first paper
    covers has no such word."""
    required = _topic_other("Which defenses stop backdoor attacks in federated learning?")
    example = _topic_other("Which defenses stop backdoor attacks (e.g. in federated learning)?")
    assert required > example
    assert _topic_other("How is transfer learning used to detect pathologies in EEG signals?") == 0


def test_the_missing_word_reads_closer_to_another_papers_sentences(seeds):
    """'protein' is a sentence of another hit, not of the sparse-autoencoder paper ranked
    first; 'recognition' is nearly as close to the speech-backdoor paper's 'speech
    classification' as to the speech-recognition papers."""
    off = _feature(
        "How are sparse autoencoders used to interpret protein language models?", "topic_gap"
    )
    pair = _feature("How are backdoor attacks planted in speech recognition models?", "topic_gap")
    assert off > pair


def test_a_hyphenated_term_is_present_only_where_the_paper_uses_it(seeds):
    """The speech-emotion paper says 'self-supervised' and 'trained', never 'self-training';
    the 3D-medical paper's title says 'Large-Scale' and 'Pre-training' as the question does."""
    assert _feature("How is self-training used for speech emotion recognition?", "rest_first") < 1
    assert _feature("Large-scale pre-training for 3D medical images?", "rest_first") == 1


def test_sentence_vectors_are_embedded_once_per_paper(seeds, monkeypatch):
    settings = get_settings()
    question = "How are sparse autoencoders used to interpret protein language models?"
    hits = qa.retrieve(question, settings.k)
    idf = relevance.corpus_idf(settings)
    embeddings = relevance.get_retriever(settings).index.embeddings
    embedded: list[int] = []
    original = embeddings.embed_documents
    monkeypatch.setattr(
        embeddings, "embed_documents", lambda texts: embedded.append(len(texts)) or original(texts)
    )
    relevance._sentences.clear()
    first = relevance.features(question, hits, idf, settings)
    again = relevance.features(question, hits, idf, settings)
    assert np.allclose(first, again)
    # phrase + words; the hits' sentences (one batch); phrase + words again, sentences cached
    assert len(embedded) == 3 and embedded[0] == embedded[2] < embedded[1]


@pytest.mark.parametrize(
    ("question", "abstains"),
    [  # checked by co-occurrence search: no abstract on backdoors in federated learning
        ("Which defenses stop backdoor attacks in federated learning?", True),
        ("How are sparse autoencoders used to interpret protein language models?", True),
        ("Which defenses stop backdoor attacks (e.g. in federated learning)?", False),
        ("How are backdoor attacks planted in speech recognition models?", False),
    ],
)
def test_two_topics_are_answered_only_when_one_paper_joins_them(seeds, question, abstains):
    answer = ask(question)
    assert answer.abstained is abstains, answer.text


# ---------------------------------------------------------------- papers named by ID


@pytest.mark.parametrize(
    "question", ["2304.04704", "arXiv:2304.04704", "What is arXiv:2304.04704?"]
)
def test_a_known_id_answers_about_that_paper(seeds, question):
    answer = ask(question)
    assert not answer.abstained
    assert _ids(answer) == ["2304.04704"]
    assert "POMP" in answer.text


def test_an_unknown_id_says_it_is_not_in_the_index(seeds):
    answer = ask("arXiv:2401.99999")
    assert answer.abstained
    assert answer.text.startswith("arXiv:2401.99999 is not in the index")
    assert answer.citations == []


# ---------------------------------------------------------------- follow-ups


def test_follow_up_is_answered_from_the_paper_under_discussion(seeds):
    first = ask(BACKDOOR)
    assert "2306.15875" in _ids(first)
    follow = ask("How do they create the triggers?", history=_turns(BACKDOOR, first))
    assert not follow.abstained
    assert set(_ids(follow)) <= set(_ids(first)) and "2306.15875" in _ids(follow)
    assert "voice conversion" in follow.text
    results = ask("What results did they report?", history=_turns(BACKDOOR, first))
    assert results.citations and set(_ids(results)) <= set(_ids(first))


def test_follow_up_pins_the_cited_paper_for_a_real_model(seeds, fake_openai):
    history = [
        {"role": "user", "content": "Which paper pre-trains prompts on ImageNet-21K?"},
        {"role": "assistant", "content": "POMP does [arXiv:2304.04704]."},
    ]
    fake_openai.add_text("a question about POMP's transfer")  # the condense step
    fake_openai.add_text("They evaluate on 21 datasets [arXiv:2304.04704].")
    spec = f"openai-compatible:fake@{fake_openai.base_url}"
    answer = ask("Which datasets did they use?", history=history, model=spec, structured=False)
    prompt = json.dumps(fake_openai.requests[-1].body["messages"])
    assert "[arXiv:2304.04704] Prompt Pre-Training" in prompt  # pinned into the context
    assert answer.sources[0].paper.arxiv_id == "2304.04704" and answer.sources[0].pinned
    assert _ids(answer) == ["2304.04704"]


# ---------------------------------------------------------------- support check


def _paper(key: str, title: str, abstract: str) -> Paper:
    return Paper(key=key, arxiv_id=key, title=title, abstract=abstract)


A = _paper(
    "2401.00001",
    "Voice backdoors",
    "We adopt a pre-trained voice conversion model to generate the trigger. "
    "Experiments on two speech classification tasks show the attack works.",
)
B = _paper(
    "2401.00002",
    "Membership inference",
    "Membership inference identifies whether a record was in the training set. "
    "We propose a probabilistic fluctuation test for diffusion models.",
)


def test_check_support_scores_each_sentence_against_its_citation():
    text = (
        "A voice conversion model generates the trigger [arXiv:2401.00001]. "
        "A voice conversion model generates the trigger [arXiv:2401.00002]. "
        "This sentence cites nothing."
    )
    right, swapped, bare = check_support(text, [A, B])
    assert right.citations == ["2401.00001"] and right.supported and right.score > 0.5
    assert swapped.citations == ["2401.00002"] and swapped.supported is False
    assert bare.citations == [] and bare.supported is None
    assert qa.check_support is check_support


def test_citation_to_a_paper_outside_the_context_is_unsupported():
    (one,) = check_support("The trigger is voice conversion [arXiv:2401.09999].", [A])
    assert one.supported is False and one.score == 0.0


def test_marker_after_the_full_stop_belongs_to_the_sentence_before():
    sentences = split_sentences("First claim. [arXiv:2401.00001] Second claim [arXiv:2401.00002].")
    assert sentences == ["First claim. [arXiv:2401.00001]", "Second claim [arXiv:2401.00002]."]


def test_weak_sentences_are_marked_for_display():
    text = "Membership inference finds records [arXiv:2401.00001]."
    support = check_support(text, [A, B])
    assert "weakly supported" in mark_weak(text, support)
    good = "Voice conversion generates the trigger [arXiv:2401.00001]."
    assert mark_weak(good, check_support(good, [A, B])) == good


def test_answer_support_is_in_ask_json(seeds, capsys):
    assert main(["ask", "What is POMP?", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["support"] and all(s["supported"] for s in data["support"] if s["citations"])
    assert {"text", "citations", "score", "supported"} <= set(data["support"][0])


# ---------------------------------------------------------------- clean stub answers


def test_stub_answer_has_no_repeats_and_one_marker_per_sentence(seeds):
    answer = ask(BACKDOOR)
    sentences = split_sentences(answer.text)
    assert len(sentences) == len(set(sentences))
    for sentence in sentences:
        markers = [m for m in sentence.split("[")[1:]]
        assert len(markers) == len(set(markers))
    assert "Membership Inference" not in answer.text  # off-topic filler is left out


def test_repeated_markers_are_collapsed():
    from qa.citations import validate

    text = validate("Claim [arXiv:2401.00001][arXiv:2401.00001] [arXiv:2401.00001].", [A]).text
    assert text == "Claim [arXiv:2401.00001]."


def test_cjk_question_finds_the_latin_term(seeds):
    hits = qa.retrieve("什么是POMP？", k=3)
    assert hits[0].paper.arxiv_id == "2304.04704"
    assert _ids(ask("什么是POMP？")) == ["2304.04704"]


# ---------------------------------------------------------------- qa eval --calibrate


def test_eval_calibrate_refits_and_reports_per_wording(seeds, tmp_path, monkeypatch, capsys):
    rows = [json.loads(r) for r in GOLDEN.read_text().splitlines() if r.strip()]
    picked = [r for r in rows if r["type"] == "offcorpus"][:8]
    picked += [r for r in rows if r["type"] in ("method", "paraphrase")][:12]
    picked[0]["split"] = picked[-1]["split"] = "heldout"
    golden = tmp_path / "golden.jsonl"
    golden.write_text("\n".join(json.dumps(r) for r in picked))
    out_model = tmp_path / "relevance.json"
    monkeypatch.setenv("QA_RELEVANCE_MODEL", str(out_model))
    get_settings.cache_clear()
    from qa.evaluate import run_eval

    results = run_eval(calibrate_gate=True, golden=golden)
    printed = capsys.readouterr().out
    assert out_model.is_file() and relevance.load_model(out_model).meta["fitted_on"] > 0
    for label in ("cv plain", "cv polite", "cv terse", "held-out plain", "ROC AUC"):
        assert label in printed
    assert set(results["calibration"]["cross_validated"]) == {"plain", "polite", "terse"}
    assert {"swapped citations detected", "paraphrases flagged"} <= set(results["support"])


def test_ui_marks_a_weakly_supported_sentence(seeds, fake_openai, monkeypatch):
    import app

    monkeypatch.setenv("QA_STRUCTURED_OUTPUT", "false")
    get_settings.cache_clear()
    fake_openai.add_text(
        "POMP is a prompt pre-training method for vision-language models [arXiv:2304.04704]. "
        "It grounds bounding boxes as Markdown links to build GrIT [arXiv:2304.04704]."
    )
    spec = f"openai-compatible:fake@{fake_openai.base_url}"
    monkeypatch.setenv("QA_MODELS", spec)  # the operator offers it (qa/policy.py)
    get_settings.cache_clear()
    *_, (shown, final) = app.answer_events("What is POMP?", [], spec, 5, get_settings())
    assert [s.supported for s in final.support] == [True, False]
    assert shown.count("weakly supported") == 1
    assert shown.index("weakly supported") > shown.index("GrIT")
