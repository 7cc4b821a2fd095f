"""The UI in a real headless browser: Playwright (sync API) driving Debian's Chromium.

Each app is built with `app.build_demo(settings)` bound to its own index, so the corpus app
and the XSS app run side by side in this process. Set ARXIV_QA_SCREENSHOT=<path> to also
save the answer screenshot there (how docs/screenshot.png is made).
"""

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # app.py lives at the project root, outside the `qa` package
    sys.path.insert(0, str(ROOT))

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)",
    ),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

VOICE_QUESTION = "How can voice conversion be used for backdoor attacks on speech classification?"
VOICE_BACKDOOR = "2306.15875"
ANSWER_LINK = '#chat [data-testid="bot"] a[href^="https://arxiv.org/abs/"]'
XSS_ID = "2401.99999"
XSS_ABSTRACT = (
    "Quokka lattice distillation <img src=x onerror=alert(1)> compresses sparse retrieval "
    "indexes for quokka lattices <script>alert(2)</script> without losing recall, see "
    "https://evil.example/q, www.evil.example, <https://auto.example> or quokka@evil.example. "
    "The quokka lattice method renders ${alert(3)} and {{constructor.constructor('alert(4)')()}} "
    "as plain text [click](javascript:alert(5)) and ![pixel](x) too."
)
OTHER_PAPERS = [
    ("2401.99998", "Sparse Retrieval at Scale", "Sparse retrieval indexes scale to billions."),
    ("2401.99997", "Lattice Models", "Lattice models describe crystals and their phases."),
    ("2401.99996", "Marsupial Vision", "Quokkas and wallabies see colour in low light."),
]
# Records each length the newest answer bubble passes through, to see it stream.
RECORD_ANSWER_LENGTHS = """() => {
  window.answerLengths = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('#chat [data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText : '';
    const n = text.includes('Searching the abstracts') ? 0 : text.length;
    const seen = window.answerLengths;
    if (n && seen[seen.length - 1] !== n) seen.push(n);
  }).observe(document.querySelector('#chat'), {subtree: true, childList: true,
                                                characterData: true});
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_for(persist_dir: Path, **extra):
    from qa.config import Settings

    return Settings(persist_dir=persist_dir, openai_api_key=None, model="stub", auth=None, **extra)


@pytest.fixture(scope="module")
def launch():
    """Launch `app.build_demo(settings)` apps on free ports; all closed at module end."""
    import app

    demos = []

    def start(settings, port: int | None = None) -> str:
        demo = app.build_demo(settings)
        port = port or free_port()
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        demos.append(demo)
        return f"http://127.0.0.1:{port}/"

    start.demos = demos
    yield start
    for demo in demos:
        demo.close()


@pytest.fixture(scope="module")
def corpus_url(launch, tmp_path_factory) -> str:
    """The bundled corpus (the same index path test_app.py uses, so it is built once)."""
    from qa.index import ensure_index

    settings = settings_for(tmp_path_factory.getbasetemp() / "app-index")
    ensure_index(settings, progress=False)
    return launch(settings)


@pytest.fixture(scope="module")
def xss_url(launch, tmp_path_factory) -> str:
    """A tiny index whose abstract (and title) carry HTML, JS and template syntax."""
    import qa

    base = tmp_path_factory.mktemp("xss")
    seed = base / "hostile.jsonl"
    rows = [
        {
            "arxiv_id": XSS_ID,
            "title": "Quokka <img src=x onerror=alert(6)> Lattice Distillation",
            "abstract": XSS_ABSTRACT,
        },
        *({"arxiv_id": i, "title": t, "abstract": a} for i, t, a in OTHER_PAPERS),
    ]
    seed.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    settings = settings_for(base / "index")
    qa.build_index(qa.load_corpus(seed), settings=settings, progress=False)
    return launch(settings)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def open_app(page, url: str) -> None:
    """Wait for `load` and then the question box; a Gradio page never goes network-idle."""
    page.goto(url, wait_until="load")
    page.wait_for_selector("#question textarea")


def ask(page, question: str, answers_before: int = 0) -> None:
    """Type a question, send it, and wait until its answer and sources are complete."""
    page.fill("#question textarea", question)
    page.keyboard.press("Enter")
    page.wait_for_function(
        """n => document.querySelectorAll('#chat [data-testid="bot"]').length > n
              && !document.querySelector('#sources').innerText.includes('Looking up papers')""",
        arg=answers_before,
    )


def test_question_streams_a_linked_answer_beside_its_sources(page, corpus_url, tmp_path):
    open_app(page, corpus_url)
    page.wait_for_function("document.querySelector('#status').innerText.includes('indexed')")
    page.evaluate(RECORD_ANSWER_LENGTHS)
    page.fill("#question textarea", VOICE_QUESTION)
    page.keyboard.press("Enter")
    page.wait_for_selector(ANSWER_LINK)
    page.wait_for_selector("#sources .qa-cited")
    lengths = page.evaluate("window.answerLengths")
    assert len(lengths) > 2, "the answer grew on screen as it streamed"

    links = page.eval_on_selector_all(ANSWER_LINK, "els => els.map(e => e.href)")
    assert f"https://arxiv.org/abs/{VOICE_BACKDOOR}" in links
    answer = page.inner_text('#chat [data-testid="bot"]')
    assert "voice conversion" in answer and "[arXiv:" not in answer  # markers became links

    cited = page.locator("#sources .qa-cited").first
    assert "Fake the Real" in cited.inner_text()
    assert cited.locator("a").get_attribute("href") == f"https://arxiv.org/abs/{VOICE_BACKDOOR}"
    assert "voice conversion" in cited.locator(".qa-snippet").inner_text()  # the part that matched
    assert page.locator("#sources .qa-uncited").count() >= 1
    assert "not cited" in page.inner_text("#sources .qa-uncited")
    assert page.input_value("#question textarea") == ""

    page.screenshot(path=str(tmp_path / "answer.png"), full_page=True)
    if target := os.environ.get("ARXIV_QA_SCREENSHOT"):
        shutil.copy(tmp_path / "answer.png", target)


def test_follow_up_in_the_browser_stays_on_the_paper(page, corpus_url):
    open_app(page, corpus_url)
    ask(page, "What is POMP?")
    ask(page, "What datasets did they evaluate on?", answers_before=1)
    searched = page.inner_text("#sources .qa-query")
    assert "2304.04704" in searched, "the follow-up was searched with the paper under discussion"
    cited = page.eval_on_selector_all("#sources .qa-cited a", "els => els.map(e => e.href)")
    assert "https://arxiv.org/abs/2304.04704" in cited
    assert "21 downstream datasets" in page.inner_text('#chat [data-testid="bot"] >> nth=1')


def choose_model(page, spec: str) -> None:
    """Pick an offered model from the menu (it takes no typed value)."""
    page.click("#model input")
    page.get_by_role("option", name=spec, exact=True).click()
    page.wait_for_function(
        "spec => document.querySelector('#model input').value === spec", arg=spec
    )


@pytest.fixture(scope="module")
def two_models_url(launch, tmp_path_factory) -> str:
    """The corpus with two offered models: the stub and OpenAI (no key on this server)."""
    settings = settings_for(
        tmp_path_factory.getbasetemp() / "app-index", models=["stub", "openai:gpt-4o-mini"]
    )
    return launch(settings)


def test_model_error_shows_in_the_chat_and_the_ui_recovers(page, two_models_url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    open_app(page, two_models_url)
    choose_model(page, "openai:gpt-4o-mini")
    ask(page, VOICE_QUESTION)
    message = page.inner_text('#chat [data-testid="bot"]')
    assert "OPENAI_API_KEY" in message and "Traceback" not in message
    choose_model(page, "stub")
    ask(page, VOICE_QUESTION, answers_before=1)
    page.wait_for_selector(ANSWER_LINK)
    assert page.locator("#sources .qa-cited").count() >= 1


def test_html_and_js_from_abstracts_stay_inert(page, xss_url, tmp_path):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    open_app(page, xss_url)
    ask(page, "What does quokka lattice distillation do? <img src=x onerror=alert(7)>")
    page.wait_for_selector(f'#sources a[href="https://arxiv.org/abs/{XSS_ID}"]')
    page.wait_for_timeout(1500)  # time for any injected handler to fire

    assert dialogs == []
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("#chat img, #sources img, #chat script, #sources script").count() == 0
    assert page.locator('a[href^="javascript:"]').count() == 0

    answer = page.inner_text('#chat [data-testid="bot"]')
    assert "Quokka lattice distillation" in answer
    assert "<img src=x onerror=alert(1)>" in answer  # shown as text, not as an element
    asked = page.inner_text('#chat [data-testid="user"]')
    assert "<img src=x onerror=alert(7)>" in asked
    panel = page.inner_text("#sources")
    assert "Quokka <img src=x onerror=alert(6)> Lattice Distillation" in panel
    assert "${alert(3)}" in panel or "<script>alert(2)</script>" in panel
    page.screenshot(path=str(tmp_path / "inert.png"), full_page=True)


def chat_links(page) -> list[str]:
    return page.eval_on_selector_all("#chat a", "els => els.map(e => e.href)")


def test_only_our_markers_become_links(page, xss_url):
    open_app(page, xss_url)
    ask(page, "What does quokka lattice distillation do? Ask me@example.org or www.example.org")
    page.wait_for_selector(f'#chat a[href="https://arxiv.org/abs/{XSS_ID}"]')
    answer = page.inner_text('#chat [data-testid="bot"]')
    for text in ("https://evil.example/q", "www.evil.example", "quokka@evil.example"):
        assert text in answer, "shown as plain text"
    assert "<https://auto.example>" in answer
    assert "me@example.org or www.example.org" in page.inner_text('#chat [data-testid="user"]')
    links = chat_links(page)
    assert links and all(link.startswith("https://arxiv.org/abs/") for link in links), links


def test_conversation_survives_refresh_and_restart_and_clear_empties_everything(
    page, launch, tmp_path_factory
):
    settings = settings_for(tmp_path_factory.getbasetemp() / "app-index")
    port = free_port()
    url = launch(settings, port)
    open_app(page, url)
    ask(page, "What is POMP?")
    page.wait_for_selector(ANSWER_LINK)
    page.wait_for_timeout(500)  # the conversation is saved after the answer completes

    page.reload(wait_until="load")
    page.wait_for_selector(ANSWER_LINK)  # restored after a refresh
    assert "What is POMP?" in page.inner_text('#chat [data-testid="user"]')

    launch.demos.pop().close()  # a server restart: a new process state on the same port
    launch(settings, port)
    page.reload(wait_until="load")
    page.wait_for_selector(ANSWER_LINK)
    assert "https://arxiv.org/abs/2304.04704" in chat_links(page)

    ask(page, "What datasets did they evaluate on?", answers_before=1)  # history still works
    assert "2304.04704" in page.inner_text("#sources .qa-query")

    for clear_button in ('#chat button[aria-label="Clear"]', "#new-chat"):  # both clear all
        if clear_button == "#new-chat":
            ask(page, "What is POMP?")
        page.click(clear_button)
        page.wait_for_function(
            "document.querySelector('#sources').innerText.includes('Ask a question to see papers')"
        )
        assert page.locator('#chat [data-testid="bot"]').count() == 0
    page.wait_for_timeout(500)
    page.reload(wait_until="load")
    page.wait_for_selector("#question textarea")
    page.wait_for_timeout(1500)
    assert page.locator('#chat [data-testid="bot"]').count() == 0, "cleared for good"
