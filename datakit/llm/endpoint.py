"""Where a synthesis step's requests go, and whether the user's credentials go with them.

A recipe is shared; the API keys in the user's environment are not the recipe's to spend. A recipe may name an
`api_base` (an OpenAI-compatible server), but that address receives no credential from the environment unless
the user allows it: `datakit build --allow-api-base URL` (repeatable) or `DATAKIT_ALLOW_API_BASE` (URLs,
comma-separated). An address not allowed gets a placeholder key instead (litellm then never reads
OPENAI_API_KEY & co. for it), so a server that needs a key answers 401 and the build says how to allow it.
Without `api_base` the provider's own endpoint (from the model string) is used with the environment's key,
as litellm does.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

ALLOW_ENV = "DATAKIT_ALLOW_API_BASE"
NO_KEY = "datakit-no-key"  # sent to an address the user did not allow: not a secret, never a real key


def normalize(api_base: str) -> str:
    """scheme://host[:port]/path, lower-cased scheme and host, no trailing slash, no credentials or query."""
    parts = urlsplit(api_base.strip())
    host = (parts.hostname or "").lower()
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"


def allowed_bases() -> list[str]:
    return [normalize(b) for b in os.environ.get(ALLOW_ENV, "").split(",") if b.strip()]


def allow(bases: list[str]) -> None:
    """Allow these addresses for this process and the workers it starts (the command line's flag)."""
    current = [b for b in os.environ.get(ALLOW_ENV, "").split(",") if b.strip()]
    os.environ[ALLOW_ENV] = ",".join(dict.fromkeys([*current, *bases]))


def is_allowed(api_base: str) -> bool:
    """The user allowed this address: equal to an allowed URL, or below its path."""
    base = normalize(api_base)
    return any(base == a or base.startswith(a + "/") for a in allowed_bases())


def request_params(api_base: str | None) -> dict[str, str]:
    """litellm params for the endpoint: none for the provider's own; for a recipe's api_base, the base and,
    unless the user allowed it, a placeholder key in place of the environment's."""
    if not api_base:
        return {}
    if is_allowed(api_base):
        return {"api_base": api_base}
    return {"api_base": api_base, "api_key": NO_KEY}


def cache_endpoint(api_base: str | None) -> str:
    """The endpoint part of an answer's cache key ("" for the provider's own endpoint): answers of one server
    are never served as another's."""
    return normalize(api_base) if api_base else ""


def describe(model: str, api_base: str | None) -> str:
    """One line for the build's output: the model, where its requests go, and whether credentials go too."""
    if model.startswith("embedded/"):
        return f"{model} (in this process, offline)"
    if not api_base:
        return f"{model} at the provider's endpoint (credentials from the environment)"
    if is_allowed(api_base):
        return f"{model} at {normalize(api_base)} (allowed: credentials from the environment)"
    return (f"{model} at {normalize(api_base)} (credentials withheld: the recipe chose this address; "
            f"--allow-api-base {normalize(api_base)} or {ALLOW_ENV} sends them)")
