"""Model-call failures explained in one plain sentence, with no secret in it."""

from __future__ import annotations

import os
import re

from qa.config import Settings, get_settings
from qa.models.specs import OPENAI_DEFAULT_URL, ModelError, missing_key_message, parse_spec

_SECRET_LIKE = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+)")


def _scrub(text: str, settings: Settings) -> str:
    """Remove anything that could be a key from text shown to the user."""
    secrets = [os.environ.get("OPENAI_API_KEY", "")]
    secrets += [k.get_secret_value() for k in (settings.openai_api_key, settings.llm_api_key) if k]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return _SECRET_LIKE.sub("***", text)


def _endpoint(spec: str) -> str:
    """Where a spec's requests go, for messages."""
    try:
        parsed = parse_spec(spec)
    except ModelError:
        return "the model server"
    if parsed.kind == "openai":
        return os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_URL
    if parsed.kind == "llamacpp":
        return f"the local model {parsed.name}"
    return _without_credentials(parsed.base_url) if parsed.base_url else "the model server"


def _without_credentials(url: str) -> str:
    """`http://user:pass@host/v1` → `http://host/v1`: URLs in messages carry no secrets."""
    return re.sub(r"(?<=://)[^/@\s]+@", "", url)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts (httpx errors hide behind openai's)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _names(excs: list[BaseException]) -> set[str]:
    return {cls.__name__ for e in excs for cls in type(e).__mro__}


def explain_error(exc: BaseException, spec: str, settings: Settings | None = None) -> str:
    """One sentence saying what went wrong with a model call and what to do; never a key."""
    settings = settings or get_settings()
    where = _endpoint(spec)
    message = _explain(exc, spec, where, settings)
    return _scrub(message, settings)


def _explain(exc: BaseException, spec: str, where: str, settings: Settings) -> str:
    if isinstance(exc, ModelError):
        return str(exc)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return _explain_status(exc, status, spec, where, settings)
    names = _names(_chain(exc))
    if names & {"TimeoutException", "APITimeoutError", "TimeoutError", "ReadTimeout"}:
        return (
            f"No answer from {where} within {settings.request_timeout:g} s "
            "(QA_REQUEST_TIMEOUT); the server may be overloaded or the model still loading."
        )
    if names & {"ConnectError", "ConnectionRefusedError", "ConnectTimeout"}:
        return f"Cannot reach the model server at {where}: is it running?"
    if names & {"RemoteProtocolError", "ReadError", "ConnectionResetError"}:
        return (
            f"The connection to {where} was cut before the answer was complete; "
            "the answer is incomplete, please try again."
        )
    if names & {"JSONDecodeError", "APIResponseValidationError"} or _is_non_json(exc):
        return (
            f"The model server at {where} sent a reply that is not valid OpenAI-style JSON: "
            "is it an OpenAI-compatible endpoint (the URL usually ends in /v1)?"
        )
    if "APIConnectionError" in names:
        return f"Cannot talk to the model server at {where}: {type(exc).__name__}."
    if "api_key" in str(exc) and "OpenAIError" in names:
        return missing_key_message(spec)
    return f"The model call to {where} failed ({type(exc).__name__}: {summarise(str(exc))})."


def _is_non_json(exc: BaseException) -> bool:
    text = str(exc)
    markers = ("Unexpected response type", "Expecting value", "No generation chunks")
    return any(m in text for m in markers)


def _model_name(spec: str) -> str:
    try:
        return parse_spec(spec).name
    except ModelError:
        return spec


def _retries(settings: Settings) -> str:
    n = settings.max_retries
    return f"retrying {n} time" + ("" if n == 1 else "s")


def _explain_status(
    exc: BaseException, status: int, spec: str, where: str, settings: Settings
) -> str:
    if status == 401:
        return (
            f"The model server at {where} rejected the API key (HTTP 401): check "
            "OPENAI_API_KEY, or use `--model stub` or a local model."
        )
    if status == 403:
        return f"The API key is not allowed to use {spec} at {where} (HTTP 403)."
    if status == 429:
        if "insufficient_quota" in str(getattr(exc, "body", "") or ""):
            return f"The account behind the API key has no quota left for {spec} (HTTP 429)."
        return (
            f"The model server at {where} is rate-limiting requests (HTTP 429), still after "
            f"{_retries(settings)} (QA_MAX_RETRIES); wait a moment and try again."
        )
    if status == 404:
        return (
            f"The server at {where} has no model {_model_name(spec)!r} or no chat "
            "endpoint there (HTTP 404): check the model name and that the URL ends in /v1."
        )
    if status >= 500:
        return (
            f"The model server at {where} failed with HTTP {status} (its own error, still "
            f"after {_retries(settings)}); try again later or check the server's log."
        )
    detail = summarise(_body_message(exc))
    return f"The model server at {where} refused the request (HTTP {status}): {detail}"


_HTML = re.compile(r"<\s*(!doctype|html|head|body|title|div|p|h1|pre)\b", re.IGNORECASE)
SUMMARY_CHARS = 160


def _body_message(exc: BaseException) -> str:
    """The error message inside a server's reply (OpenAI's envelope or plain text)."""
    body = getattr(exc, "body", None)
    for _ in range(2):  # {"message": …} or {"error": {"message": …}}
        if isinstance(body, dict):
            body = body.get("message") or body.get("error") or body.get("detail")
    return str(body if body is not None else getattr(exc, "message", "") or exc)


def summarise(text: str) -> str:
    """One sanitised line of a remote reply, never the reply itself: an HTML page is named
    as such, tags and control characters go, and the line is cut to SUMMARY_CHARS."""
    if _HTML.search(text):
        return "(an HTML page)"
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join("".join(c for c in re.sub(r"<[^>]*>", "", line) if c.isprintable()).split())
    if len(line) > SUMMARY_CHARS:
        line = line[: SUMMARY_CHARS - 1] + "…"
    return line or "(no details)"
