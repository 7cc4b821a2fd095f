"""The `qa` command through its real entry point: output, exit codes, clear errors."""

from __future__ import annotations

import json

from qa.cli import main

pytest_plugins = ["chroma_server"]


def test_ask_prints_answer_and_cited_papers(seeds, capsys):
    assert main(["ask", "What is POMP?"]) == 0
    out = capsys.readouterr().out
    assert "[arXiv:2304.04704]" in out
    assert "Cited papers:" in out and "https://arxiv.org/abs/2304.04704" in out


def test_ask_json_is_machine_readable_and_secret_free(seeds, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123456")
    assert main(["ask", "What is POMP?", "--json", "--k", "3"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["citations"][0]["arxiv_id"] == "2304.04704"
    assert len(data["sources"]) == 3
    assert "sk-test-secret" not in out


def test_empty_question_exits_2_with_a_message(seeds, capsys):
    assert main(["ask", "  "]) == 2
    assert "Please type a question" in capsys.readouterr().err


def test_missing_openai_key_names_the_variable(seeds, capsys):
    assert main(["ask", "What is POMP?", "--model", "openai:gpt-4o-mini"]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY" in err and "Traceback" not in err


def test_ingest_adds_a_users_jsonl_and_reports_bad_lines(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"arxiv_id": "2501.00011", "title": "Walking Robots", "abstract": "We teach '
        'quadruped robots to walk on ice with model-predictive control."}\n'
        "{not json\n",
        encoding="utf-8",
    )
    assert main(["ingest", str(path)]) == 0
    captured = capsys.readouterr()
    assert "line 2" in captured.err
    assert "1 added" in captured.out
    assert main(["ingest", str(path)]) == 0  # idempotent
    assert "0 added" in capsys.readouterr().out


def test_ingest_unknown_layout_stops_naming_the_file(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("milk\neggs\nbread\n", encoding="utf-8")
    assert main(["ingest", str(path)]) == 2
    assert "notes.txt" in capsys.readouterr().err


def test_chat_keeps_history_for_follow_ups(seeds, capsys, monkeypatch):
    lines = iter(["What is POMP?", "Which datasets did they evaluate it on?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat"]) == 0
    out = capsys.readouterr().out
    assert out.count("[arXiv:2304.04704]") >= 2
