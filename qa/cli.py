"""The `qa` command: ingest, papers, remove, ask, chat, serve, eval, resolve, fetch, similar.

Every subcommand reads the one Settings object; flags override it for that run. Errors a user
can act on (bad file, missing key, dead server, unreachable index) print one clear line and
exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from qa.config import Settings, SettingsError, get_settings, with_overrides

EXIT_USER_ERROR = 2
FLAGS = ("model", "k", "embeddings", "host", "port")  # flags that override a setting


def _settings(args: argparse.Namespace) -> Settings:
    """Settings with this run's flags applied, validated like the variables they override."""
    values = {name: getattr(args, name, None) for name in FLAGS}
    return with_overrides(get_settings(), {n: f"--{n}" for n in FLAGS}, **values)


def _user_errors() -> tuple[type[BaseException], ...]:
    from qa.arxiv_api import FetchError
    from qa.chain import QuestionError
    from qa.corpus import CorpusError
    from qa.embeddings import EmbeddingsUnavailable
    from qa.filters import FilterError
    from qa.index import IndexUnavailable
    from qa.models import ModelError
    from qa.similarity import UnknownPaper

    return (
        *(QuestionError, CorpusError, IndexUnavailable, ModelError, SettingsError),
        *(EmbeddingsUnavailable, FilterError, UnknownPaper, FetchError),
    )


# ---------------------------------------------------------------- subcommands


def cmd_ingest(args: argparse.Namespace) -> int:
    """Record files (default: the bundled seeds) in the corpus record, then update the index."""
    from qa.corpus import read_corpus
    from qa.filters import Filters
    from qa.index import export_vector_cache, open_index
    from qa.ingest import build_index
    from qa.store import BUNDLED, USER, open_store

    settings = _settings(args)
    filters = Filters.make(args.since, args.until, args.category)
    if args.paths and (filters or _is_large(args.paths)):
        return _ingest_streamed(args.paths, filters, settings)
    rebuild = args.rebuild or args.reembed
    paths = args.paths
    if not paths and not (rebuild and open_store(settings).count()):
        paths = [settings.seeds_dir]  # `--rebuild` alone re-reads the record, not the seeds
    papers, origin = [], USER
    if paths:
        report = read_corpus(paths)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for note in report.kept_both:
            print(f"note: {note}", file=sys.stderr)
        print(
            f"loaded {len(report.papers)} papers from {', '.join(map(str, paths))} "
            f"({report.records} records: {report.merged} merged as duplicates, "
            f"{len(report.kept_both)} kept beside another version of their ID, "
            f"{report.skipped} skipped)"
        )
        papers = report.papers
        origin = BUNDLED if all(_inside(p, settings.seeds_dir) for p in paths) else USER
    ingest = build_index(papers, settings=settings, rebuild=rebuild, origin=origin)
    for note in ingest.notes():
        print(f"note: {note}", file=sys.stderr)
    print(ingest.summary())
    if args.save_vector_cache:
        print(f"vector cache written to {export_vector_cache(open_index(settings))}")
    return 0


STREAM_BYTES = 64 << 20  # files above this are ingested in batches (bounded memory)


def _is_large(paths: Sequence[str]) -> bool:
    from qa.corpus import corpus_files

    return any(f.stat().st_size > STREAM_BYTES for f in corpus_files(paths))


def _ingest_streamed(paths: Sequence[str], filters, settings: Settings) -> int:
    """Snapshot-sized or filtered ingest: read, filter and index batch by batch."""
    from qa.snapshot import ingest_stream

    if filters:
        print(f"keeping papers matching: {filters.describe()}", file=sys.stderr)
    report = ingest_stream(paths, filters=filters, settings=settings, progress=sys.stderr.isatty())
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in report.ingest.notes():
        print(f"note: {note}", file=sys.stderr)
    print(report.summary())
    return 0


def _inside(path, folder) -> bool:
    from pathlib import Path

    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def cmd_papers(args: argparse.Namespace) -> int:
    """What the corpus record holds: counts by origin and source file, or every paper."""
    from collections import Counter

    from qa.index import split_record_key
    from qa.store import open_store

    settings = _settings(args)
    store = open_store(settings)
    if not store.exists():
        print(f"no corpus record yet at {store.path}; `qa ingest` (or the first question) makes it")
        return 0
    papers, origins = store.papers(), store.origins()
    if args.json:
        rows = [dict(p.to_dict(), origin=origins.get(p.key)) for p in papers]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if args.list:
        for p in papers:
            ident = f"arXiv:{p.arxiv_id}" if p.arxiv_id else f"ref:{p.key}"
            print(f"{ident}\t{origins.get(p.key)}\t{','.join(p.sources)}\t{p.title}")
        return 0
    by_origin = Counter(origins.get(p.key) for p in papers)
    print(
        f"{len(papers)} papers in {store.path} ({by_origin['bundled']} bundled, "
        f"{by_origin['user']} added by you)"
    )
    for source, n in sorted(Counter(s for p in papers for s in p.sources).items()):
        print(f"  {n:6d}  {source}")
    for target, active in sorted(store.actives().items()):
        where, _ = split_record_key(target)
        print(
            f"index: collection {active.name} ({where}), {active.chunks} chunks, "
            f"built with {active.model}"
        )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Take papers out of the corpus record and the index."""
    from qa.ingest import remove_papers

    settings = _settings(args)
    gone, missing, report = remove_papers(args.ids, settings=settings)
    for ident in missing:
        print(
            f"warning: {ident} is not in the corpus record (see `qa papers --list`)",
            file=sys.stderr,
        )
    print(f"removed {len(gone)} papers ({', '.join(gone) or 'none'}); {report.summary()}")
    return 0 if gone or not missing else EXIT_USER_ERROR


def _print_answer(answer, as_json: bool, bibtex: bool = False) -> None:
    """The cited papers after a streamed answer (or the whole Answer as JSON); with `bibtex`,
    their BibTeX too (a `bibtex` field in JSON)."""
    if as_json:
        data = answer.to_dict() | ({"bibtex": answer.bibtex()} if bibtex else {})
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    print()
    if answer.citations:
        print("\nCited papers:")
        for paper in answer.citations:
            link = paper.url or f"(no arXiv ID, key {paper.key})"
            print(f"  [{paper.arxiv_id or paper.key}] {paper.title}\n      {link}")
    elif answer.sources and answer.abstained:
        print("\n(no paper cited)")
    if bibtex and answer.citations:
        print("\n" + answer.bibtex(), end="")


def _filter_args(args: argparse.Namespace) -> dict:
    """The retrieval filters given as flags (`--since`, `--until`, `--categories`, `--authors`)."""
    return {name: getattr(args, name, None) for name in ("since", "until", "categories", "authors")}


def _stream_answer(
    question: str,
    history: list,
    settings: Settings,
    as_json: bool,
    filters: dict | None = None,
    bibtex: bool = False,
):
    """Print the answer as it streams (plain mode) and return the final Answer."""
    from qa.chain import Answer, stream

    final = None
    events = stream(question, history, settings.model, settings=settings, **(filters or {}))
    for event in events:
        if isinstance(event, Answer):
            final = event
        elif not as_json:
            print(event, end="", flush=True)
    _print_answer(final, as_json, bibtex)
    for note in final.notes:
        print(f"note: {note}", file=sys.stderr)
    return final


def cmd_ask(args: argparse.Namespace) -> int:
    settings = _settings(args)
    filters = _filter_args(args)
    answer = _stream_answer(args.question, [], settings, args.json, filters, args.bibtex)
    return 1 if answer.error else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Papers from the arXiv API for a query, recorded and indexed page by page."""
    from qa.arxiv_api import fetch

    settings = _settings(args)
    report = fetch(args.query, args.max, settings=settings, progress=sys.stderr.isatty())
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    if report.error:
        print(f"error: {report.error}; run the same command again to continue", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    """Papers like one paper, by its own embedding."""
    from qa.similarity import similar

    settings = _settings(args)
    hits = similar(args.id, settings.k, settings=settings, **_filter_args(args))
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return 0
    for hit in hits:
        paper = hit.paper
        print(f"{hit.score:.3f}  [{paper.arxiv_id or paper.key}] {paper.title}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """A terminal chat that keeps the conversation as history for follow-ups."""
    settings = _settings(args)
    history: list[dict] = []
    print(f"arxiv-qa chat (model: {settings.model}). Empty line or Ctrl-D to quit.")
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not question:
            return 0
        try:
            answer = _stream_answer(question, history, settings, False, _filter_args(args))
        except _user_errors() as exc:
            print(f"error: {exc}", file=sys.stderr)
            continue
        history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer.text},
        ]


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve app.py's UI (it lives beside the package, as Gradio demos do); the settings
    and flags are checked before Gradio loads."""
    import importlib.util

    from qa.config import PROJECT_ROOT

    if args.mcp:  # before app.py builds its Blocks: the MCP tools are part of them
        os.environ["QA_MCP"] = "true"
        get_settings.cache_clear()
    settings = _settings(args)
    spec = importlib.util.spec_from_file_location("app", PROJECT_ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app.serve(settings)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from qa.evaluate import run_eval
    from qa.index import ensure_index

    settings = _settings(args)
    ensure_index(settings)
    results = run_eval(
        settings,
        answers=args.answers,
        model=settings.model,
        sweep=args.sweep,
        calibrate_gate=args.calibrate,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    from qa.corpus import load_corpus
    from qa.resolve import resolve_missing

    settings = _settings(args)
    papers = load_corpus(args.paths or [settings.seeds_dir])
    missing = [p for p in papers if not p.arxiv_id]
    print(f"{len(missing)} of {len(papers)} papers have no arXiv ID")
    report = resolve_missing(missing, settings=settings)
    if report.error:
        print(f"error: {report.error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(
        f"resolved {len(report.resolved)}, not found {len(report.not_found)}, "
        f"already cached {report.skipped_cached} (cache: {settings.resolve_cache_path})"
    )
    for old, new in report.resolved:
        print(f"  {old} → arXiv:{new}")
    if report.resolved:
        print("run `qa ingest` to index the new IDs")
    return _fill_metadata(papers, settings, bundled=not args.paths) if args.metadata else 0


def _fill_metadata(papers: list, settings: Settings, bundled: bool) -> int:
    """`qa resolve`'s second half: authors, categories, dates… for papers with an ID, from
    the arXiv API, recorded and indexed."""
    from qa.arxiv_api import fill_metadata, lacks_metadata
    from qa.ingest import build_index
    from qa.store import BUNDLED, USER

    wanted = sum(lacks_metadata(p) for p in papers)
    print(f"{wanted} papers with an arXiv ID lack authors/categories; asking the arXiv API")
    report = fill_metadata(papers, settings=settings)
    if report.filled:
        ingest = build_index(
            report.filled, settings=settings, origin=BUNDLED if bundled else USER, progress=False
        )
        print(f"metadata filled for {len(report.filled)} papers; {ingest.summary()}")
    if report.not_found:
        print(f"not on arXiv: {', '.join(report.not_found[:20])}", file=sys.stderr)
    if report.error:
        print(f"error: {report.error}; run `qa resolve` again to continue", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


# ---------------------------------------------------------------- parser


def _add_filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="only papers first published on/after YYYY[-MM[-DD]]")
    p.add_argument("--until", help="only papers first published on/before YYYY[-MM[-DD]]")
    p.add_argument("--categories", help="only papers in these categories (cs.CL,cs.AI or cs)")
    p.add_argument("--authors", help="only papers by these authors (full names or surnames)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qa", description="Question answering over arXiv abstracts, with cited arXiv IDs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="index the bundled seeds or your own files")
    p.add_argument("paths", nargs="*", help="files or folders (txt layouts, JSONL, CSV)")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild the index from the whole corpus record, beside the old one (repairs a "
        "damaged index; applies a new embedding model)",
    )
    p.add_argument("--reembed", action="store_true", help="same as --rebuild")
    p.add_argument("--embeddings", help="embedding spec (default: QA_EMBEDDINGS)")
    p.add_argument(
        "--save-vector-cache", action="store_true", help="write the shipped vector cache"
    )
    p.add_argument(
        "--category", action="append", help="keep only papers in this category (cs.CL, or cs)"
    )
    p.add_argument("--since", help="keep only papers first published on/after (YYYY[-MM[-DD]])")
    p.add_argument("--until", help="keep only papers first published on/before (YYYY[-MM[-DD]])")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("papers", help="what the corpus record holds, and where it came from")
    p.add_argument("--list", action="store_true", help="one line per paper")
    p.add_argument("--json", action="store_true", help="every paper as JSON")
    p.set_defaults(func=cmd_papers)

    p = sub.add_parser("remove", help="take papers out of the corpus record and the index")
    p.add_argument("ids", nargs="+", help="arXiv IDs or ref: keys (see `qa papers --list`)")
    p.set_defaults(func=cmd_remove)

    for name, func, text in (
        ("ask", cmd_ask, "answer one question"),
        ("chat", cmd_chat, "chat in the terminal, with follow-ups"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "ask":
            p.add_argument("question")
            p.add_argument("--json", action="store_true", help="print the Answer as JSON")
            p.add_argument("--bibtex", action="store_true", help="print BibTeX of the cited papers")
        p.add_argument("--model", help="model spec: stub | openai:<m> | ollama:<m> | …")
        p.add_argument("--k", type=int, help="papers given to the model")
        _add_filter_flags(p)
        p.set_defaults(func=func)

    p = sub.add_parser("fetch", help="fetch papers from the arXiv API and index them")
    p.add_argument("query", help="arXiv query, e.g. 'cat:cs.CL AND submittedDate:[2024 TO 2025]'")
    p.add_argument("--max", type=int, help="papers to take this run (default: QA_FETCH_MAX)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("similar", help="papers like one paper (by arXiv ID)")
    p.add_argument("id", help="arXiv ID in any form (2304.04704, arXiv:…, an arxiv.org URL)")
    p.add_argument("--k", type=int, help="papers to list")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    _add_filter_flags(p)
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("serve", help="start the web UI")
    p.add_argument("--host", help="bind address (default: QA_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: QA_PORT, 7860)")
    p.add_argument(
        "--mcp", action="store_true", help="also serve MCP tools at /gradio_api/mcp/ (QA_MCP)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="retrieval and answer figures on the golden set")
    p.add_argument("--answers", action="store_true", help="also run the answer chain")
    p.add_argument("--model", help="model for --answers (default: QA_MODEL)")
    p.add_argument("--sweep", action="store_true", help="compare fusion settings")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="refit the relevance gate on the golden set's tuning rows (writes QA_RELEVANCE_MODEL)",
    )
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("resolve", help="find arXiv IDs and metadata for papers lacking them")
    p.add_argument("paths", nargs="*", help="files or folders (default: the bundled seeds)")
    p.add_argument(
        "--no-metadata",
        dest="metadata",
        action="store_false",
        help="only look up IDs (not authors, categories, dates)",
    )
    p.set_defaults(func=cmd_resolve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        get_settings()  # every command: a bad setting is one line before anything starts
        return args.func(args)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qa ask … | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
