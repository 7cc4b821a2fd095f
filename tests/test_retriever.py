"""The LangChain faces of the search and the answer chain: `qa.as_retriever()` (our checks and
LangChain's own `RetrieversIntegrationTests`) and `qa.chain.as_runnable()`, on the bundled seeds
indexed once per session."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_tests.integration_tests import RetrieversIntegrationTests

import qa
from qa.chain import as_runnable
from qa.models import StubChatModel
from qa.retriever import PaperRetriever, filter_names

pytest_plugins = ["chroma_server"]

POMP = "2304.04704"


@pytest.fixture(autouse=True)
def _every_test_reads_the_seeds(seeds):
    """Every test here reads the seeds index (embedded), selected through the environment."""


# ---------------------------------------------------------------- the retriever


def test_as_retriever_is_a_base_retriever_over_qa_retrieve():
    retriever = qa.as_retriever(k=3)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("What is POMP?")
    hits = qa.retrieve("What is POMP?", k=3)
    assert [d.metadata["arxiv_id"] for d in docs] == [h.paper.arxiv_id for h in hits]
    assert docs[0].metadata["arxiv_id"] == POMP


def test_documents_carry_the_papers_metadata():
    (doc,) = qa.as_retriever(k=1).invoke("What is POMP and what does it pre-train?")
    hit = qa.retrieve("What is POMP and what does it pre-train?", k=1)[0]
    assert isinstance(doc, Document)
    assert doc.id == hit.paper.key
    assert doc.page_content == hit.paper.abstract
    meta = doc.metadata
    assert meta["arxiv_id"] == POMP
    assert meta["title"] == hit.paper.title
    assert meta["url"] == f"https://arxiv.org/abs/{POMP}"
    assert meta["score"] == pytest.approx(hit.score, abs=1e-4)
    assert meta["snippet"] == hit.snippet
    assert meta["marker"] == f"[arXiv:{POMP}]"
    assert "abstract" not in meta  # it is the page content, not repeated


def test_k_per_call_overrides_the_constructor():
    retriever = qa.as_retriever(k=5)
    assert len(retriever.invoke("machine unlearning in language models", k=2)) == 2
    assert len(retriever.invoke("machine unlearning in language models")) == 5


def test_default_k_is_the_setting(monkeypatch):
    monkeypatch.setenv("QA_K", "4")
    qa.get_settings.cache_clear()
    assert len(qa.as_retriever().invoke("speech backdoor attacks")) == 4


def test_filters_are_those_of_qa_retrieve():
    """Any keyword option of `qa.retrieve` passes through; anything else is refused early."""
    assert "mode" in filter_names()
    docs = qa.as_retriever(k=2, mode="keyword").invoke("POMP")
    assert [d.metadata["arxiv_id"] for d in docs] == [
        h.paper.arxiv_id for h in qa.retrieve("POMP", k=2, mode="keyword")
    ]
    with pytest.raises(TypeError, match=r"unknown search filter\(s\) colour; known: .*mode"):
        qa.as_retriever(colour="red")
    with pytest.raises(TypeError, match="colour"):
        qa.as_retriever().invoke("POMP", colour="red")


def test_k_is_bounded():
    with pytest.raises(ValueError):
        qa.as_retriever(k=0)
    with pytest.raises(ValueError):
        qa.as_retriever(k=10_000)


def test_retriever_composes_into_a_user_chain():
    """The use the issue names: our search inside someone else's LCEL chain."""
    prompt = ChatPromptTemplate.from_messages([("human", "{context}\n\nQuestion: {question}")])

    def context(docs: list[Document]) -> str:
        return "\n\n".join(
            f"{d.metadata['marker']} {d.metadata['title']}\n{d.page_content}" for d in docs
        )

    chain = (
        {
            "context": qa.as_retriever(k=3) | RunnableLambda(context),
            "question": lambda q: q,
        }
        | prompt
        | StubChatModel()
    )
    reply = chain.invoke("What does POMP pre-train?")
    assert f"[arXiv:{POMP}]" in reply.text


class TestPaperRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's standard retriever suite (k in the constructor and per call, sync/async)."""

    @property
    def retriever_constructor(self) -> type[PaperRetriever]:
        return PaperRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "Which methods exist for machine unlearning in large language models?"


# ---------------------------------------------------------------- the answer chain as a Runnable


def test_as_runnable_streams_the_answer_qa_ask_gives():
    runnable = as_runnable()
    assert isinstance(runnable, Runnable)
    question = "What is POMP and what does it pre-train?"
    pieces = list(runnable.stream({"question": question, "history": []}))
    assert len(pieces) > 1  # streamed, not one block
    assert all(isinstance(p, str) for p in pieces)
    answer = qa.ask(question)
    assert "".join(pieces) == answer.text
    assert runnable.invoke({"question": question}) == answer.text
    assert f"[arXiv:{POMP}]" in answer.text


def test_as_runnable_uses_the_history():
    history = [
        {"role": "user", "content": "What is POMP?"},
        {"role": "assistant", "content": qa.ask("What is POMP?").text},
    ]
    text = as_runnable().invoke({"question": "What does it pre-train?", "history": history})
    expected = qa.ask("What does it pre-train?", history=history).text
    assert text == expected


async def test_as_runnable_async_and_batch():
    runnable = as_runnable()
    pieces = [p async for p in runnable.astream({"question": "What is POMP?"})]
    assert "".join(pieces) == qa.ask("What is POMP?").text
    texts = runnable.batch([{"question": "What is POMP?"}, {"question": "hello"}])
    assert texts[1] == qa.ask("hello").text


def test_as_runnable_refuses_bad_questions_like_qa_ask():
    with pytest.raises(qa.chain.QuestionError):
        as_runnable().invoke({"question": "   "})
