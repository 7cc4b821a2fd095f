"""Which chat model a web visitor may use: the operator decides, the visitor picks from that.

The UI and its `/ask` API call `visitor_model()`; the CLI and the Python API do not (their
user is the operator, who may use any spec). The rules:

- the offered specs are QA_MODELS (default: QA_MODEL alone), the first one the default;
- anything else is refused, unless the operator sets QA_ALLOW_CUSTOM_MODELS=true, and even
  then a spec typed by a visitor never names a file on the server (`llamacpp:`) and runs
  without the server's keys (OPENAI_API_KEY, QA_LLM_API_KEY), so no credential reaches a
  URL a visitor chose.
"""

from __future__ import annotations

import re

from qa.config import Settings
from qa.models import ModelError, parse_spec

_URL_USERINFO = re.compile(r"(https?://)[^/@\s]+@")
MAX_CUSTOM_SPEC_CHARS = 300  # a model name plus a URL; longer is not a spec


class ModelNotOffered(ModelError):
    """A visitor asked for a model the operator does not offer; the message says which are."""


def redact(spec: str) -> str:
    """A model spec as shown to visitors: any `user:password@` in a URL removed."""
    return _URL_USERINFO.sub(r"\1", spec)


def offered(settings: Settings) -> list[str]:
    """The specs the UI lists, as visitors see them (credentials in URLs removed)."""
    return [redact(spec) for spec in settings.offered_models]


def visitor_model(value: str | None, settings: Settings) -> tuple[str, Settings]:
    """(spec, settings to build it with) for a visitor's choice; ModelNotOffered otherwise.

    Blank means the default (the first offered spec). An offered spec may be given in its
    shown (redacted) form. A custom spec gets settings without any API key.
    """
    value = str(value or "").strip()
    specs = settings.offered_models
    if not value:
        return specs[0], settings
    for spec in specs:
        if value in (spec, redact(spec)):
            return spec, settings
    if not settings.allow_custom_models:
        raise ModelNotOffered(
            f"The model {redact(value)[:200]!r} is not offered here; choose one of: "
            f"{', '.join(offered(settings))} (the server's operator lists them in QA_MODELS)."
        )
    if len(value) > MAX_CUSTOM_SPEC_CHARS:
        raise ModelNotOffered(f"A model spec has at most {MAX_CUSTOM_SPEC_CHARS} characters.")
    if parse_spec(value).kind == "llamacpp":
        raise ModelNotOffered(
            "Model files on the server (llamacpp:…) cannot be chosen from the web; the "
            "server's operator can offer one in QA_MODELS."
        )
    return value, settings.model_copy(update={"openai_api_key": None, "llm_api_key": None})
