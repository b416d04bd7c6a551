"""An async LLM client on litellm (any provider by model string, or an OpenAI-compatible `api_base`).

Bounded concurrency and an optional requests-per-minute limit; every answer cached on disk before it is
used; retries with exponential backoff and jitter on rate limits (honouring Retry-After), timeouts,
connection errors and 5xx; JSON answers parsed and validated against a pydantic model, with one stricter
retry; tokens from the provider's `usage`, cost from litellm's (offline) cost map; a budget that stops new
requests once reached. API keys come from the environment (litellm reads them; for a recipe's api_base only when
the user allowed it: datakit.llm.endpoint) and are never cached, counted or logged.
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ValidationError

from datakit.llm import cache as _cache  # noqa: F401  (sets the offline cost map before litellm loads)
from datakit.llm.cache import LLMCache, cache_key
from datakit.llm.endpoint import normalize as _normalize_base


def cache_endpoint(api_base: str | None) -> str:
    return _normalize_base(api_base) if api_base else ""

Transport = Callable[..., Awaitable[Any]]  # litellm.acompletion's signature
STRICT = "Answer with one JSON object only, no other text. It must match this JSON schema: {schema}"


@dataclass
class Budget:
    """A spending cap shared by every client of a run (all synthesis steps of a recipe)."""

    limit_usd: float | None = None
    spent_usd: float = 0.0
    skipped: int = 0  # requests not sent because the cap was reached

    @property
    def reached(self) -> bool:
        return self.limit_usd is not None and self.spent_usd >= self.limit_usd

    def spend(self, usd: float) -> None:
        self.spent_usd += usd

    def skip(self) -> None:
        self.skipped += 1

    def as_dict(self) -> dict[str, Any]:
        return {"max_budget_usd": self.limit_usd, "spent_usd": round(self.spent_usd, 6), "reached": self.reached,
                "requests_not_sent": self.skipped}


@dataclass
class LLMStats:
    calls: int = 0  # requests sent to the provider (retries included)
    retries: int = 0  # of those, the ones that repeated a failed request
    cache_hits: int = 0
    failed: int = 0  # calls that still failed after the retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    budget_skipped: int = 0  # requests not sent because the budget was reached
    dropped: Counter = field(default_factory=Counter)  # answers unusable: {reason: n}
    failures: Counter = field(default_factory=Counter)  # requests that failed after retries, by error class
    failure_examples: dict[str, str] = field(default_factory=dict)  # one message per class, secrets removed

    def add(self, other: dict[str, Any]) -> None:
        """Add the counters of another client (`as_dict()` form), e.g. from a Ray worker."""
        for name in ("calls", "retries", "cache_hits", "failed", "prompt_tokens", "completion_tokens", "cost_usd", "budget_skipped"):
            setattr(self, name, getattr(self, name) + other.get(name, 0))
        self.dropped.update(other.get("dropped", {}))
        self.failures.update(other.get("failures", {}))
        for kind, text in other.get("failure_examples", {}).items():
            self.failure_examples.setdefault(kind, text)

    def fail(self, kind: str, message: str) -> None:
        self.failed += 1
        self.failures[kind] += 1
        self.failure_examples.setdefault(kind, message)

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "retries": self.retries, "cache_hits": self.cache_hits, "failed": self.failed,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": round(self.cost_usd, 6), "budget_skipped": self.budget_skipped,
                "dropped": dict(self.dropped), "failures": dict(self.failures),
                "failure_examples": dict(self.failure_examples)}


class LLMFailure(RuntimeError):
    """Too many requests of a step failed (or its first one did): the reasons by class, one example each, the
    model string and the server (never a key)."""

    def __init__(self, model: str, api_base: str | None, counts: dict[str, int], examples: dict[str, str],
                 what: str, step: str = ""):
        self.model, self.api_base, self.counts, self.examples = model, api_base, counts, examples
        server = f" at {redact(api_base)}" if api_base else ""
        reasons = "; ".join(f"{kind} x{n}: {examples.get(kind, '')}" for kind, n in
                            sorted(counts.items(), key=lambda kv: -kv[1]))
        hint = _HINTS.get(max(counts, key=counts.get), "") if counts else ""
        if api_base and counts and max(counts, key=counts.get) == "authentication":
            from datakit.llm.endpoint import ALLOW_ENV, is_allowed, normalize

            if not is_allowed(api_base):
                hint = (f"the recipe names api_base {normalize(api_base)}, which gets no credentials from your "
                        f"environment unless you allow it: --allow-api-base {normalize(api_base)} or {ALLOW_ENV}")
        super().__init__(f"{step + ': ' if step else ''}{what} to {model}{server} failed: {reasons}"
                         + (f" ({hint})" if hint else ""))


_HINTS = {
    "authentication": "check the provider's API key in the environment (e.g. OPENAI_API_KEY); keys never go in a recipe",
    "not_found": "check the model string (litellm's provider/model form, e.g. openai/gpt-4o-mini) and api_base",
    "connection": "nothing answered at that address: check api_base and that the server runs",
    "rate_limit": "lower llm.concurrency or set llm.rpm",
    "bad_output": "the model's answers do not parse as the prompt's JSON; try a stronger model or structured: true",
}


@dataclass
class Answer:
    text: str | None  # None: no usable answer (see `error`)
    data: Any = None  # the validated JSON object when a schema was given
    error: str = ""
    cached: bool = False


def _retryable(exc: Exception) -> tuple[bool, float | None]:
    """(retry?, seconds the provider asked to wait)."""
    import litellm

    retry_after = None
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name in ("retry-after", "Retry-After"):
        if name in headers:
            try:
                retry_after = float(headers[name])
            except (TypeError, ValueError):
                pass
    kinds = (litellm.RateLimitError, litellm.Timeout, litellm.APIConnectionError, litellm.InternalServerError,
             litellm.ServiceUnavailableError, asyncio.TimeoutError, TimeoutError, ConnectionError)
    status = getattr(exc, "status_code", None)
    return isinstance(exc, kinds) or (isinstance(status, int) and (status == 429 or status >= 500)), retry_after


FAILURE_CLASSES = ("authentication", "not_found", "connection", "rate_limit", "timeout", "server_error",
                   "bad_request", "bad_output", "other")
_SECRET = re.compile(r"(sk|pk|rk|key|hf|gsk|xai)[-_][A-Za-z0-9_\-]{6,}|Bearer\s+\S+|(?<=://)[^/@\s]+@", re.I)


def redact(text: str) -> str:
    """A provider's error message without what looks like a key, a bearer token or URL credentials."""
    return _SECRET.sub("[redacted]", text)


def failure_class(exc: BaseException) -> str:
    """The class of a failed request, for the manifest and the build's error: authentication, not_found,
    connection, rate_limit, timeout, server_error, bad_request or other."""
    import litellm

    from datakit.llm.embedded import EmbeddedModelError

    status = getattr(exc, "status_code", None)
    checks = (
        ((litellm.AuthenticationError, litellm.PermissionDeniedError), (401, 403), "authentication"),
        ((litellm.NotFoundError, EmbeddedModelError), (404,), "not_found"),
        ((litellm.RateLimitError,), (429,), "rate_limit"),
        ((litellm.Timeout, asyncio.TimeoutError, TimeoutError), (408,), "timeout"),
        ((litellm.APIConnectionError, ConnectionError), (), "connection"),
        ((litellm.InternalServerError, litellm.ServiceUnavailableError, litellm.BadGatewayError), (), "server_error"),
        ((litellm.BadRequestError, litellm.UnprocessableEntityError), (400, 422), "bad_request"),
    )
    text = str(exc).lower()
    if any(t in text for t in ("missing credentials", "api_key", "api key", "unauthorized", "invalid x-api-key")):
        return "authentication"  # some providers report a missing key as a 500 or a connection error
    if any(t in text for t in ("connection error", "connection refused", "name or service not known",
                               "cannot connect to host", "connect call failed")):
        return "connection"  # litellm reports an unreachable OpenAI-compatible server as a 500
    for types, codes, kind in checks:
        if isinstance(exc, types) or status in codes:
            return kind
    if any(t in text for t in ("llm provider not provided", "model not found", "does not exist", "no such gguf")):
        return "not_found"
    if isinstance(status, int) and status >= 500:
        return "server_error"
    return "other"


def describe_failure(exc: BaseException) -> str:
    """One line: the exception's class and message (a traceback litellm folds into it cut off), no secrets."""
    text = str(exc).split("Traceback (most recent call last)")[0]
    return redact(" ".join(f"{type(exc).__name__}: {text}".split()))[:400]


def parse_json(text: str, schema: type[BaseModel]) -> tuple[Any, str]:
    """(validated object, "") or (None, reason): the first {...} block of the text, checked by the schema."""
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        return None, "invalid_json"
    try:
        raw = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None, "invalid_json"
    try:
        return schema.model_validate(raw), ""
    except ValidationError:
        return None, "off_schema"


class LLMClient:
    def __init__(self, model: str, cache: LLMCache, concurrency: int = 8, rpm: int | None = None,
                 max_retries: int = 5, timeout: float = 120.0, max_budget_usd: float | None = None,
                 backoff: float = 1.0, transport: Transport | None = None, budget: Budget | None = None,
                 price_per_million: tuple[float, float] | None = None, structured: bool = False, **params: Any):
        """`price_per_million`: (input, output) USD per million tokens, for models litellm has no price for
        (self-hosted); `budget`: a cap shared with other clients (else one of `max_budget_usd`);
        `structured`: send a JSON schema `response_format` with requests that have a schema."""
        self.model, self.cache, self.params, self.structured = model, cache, params, structured
        # the endpoint is part of every answer's cache key: one server's answers are never served as another's
        self.endpoint = cache_endpoint(params.get("api_base"))
        # the embedded model samples from a seed: one per cache key, so the k-th sample differs from the first
        self._seeded = model.startswith("embedded/")
        self.concurrency, self.rpm, self.max_retries = concurrency, rpm, max_retries
        self.timeout, self.backoff, self.price = timeout, backoff, price_per_million
        self.budget = budget if budget is not None else Budget(max_budget_usd)
        self.stats = LLMStats()
        if model.startswith("embedded/") and transport is None:
            from datakit.llm.embedded import register

            register()
        self._transport = transport
        self._sent: list[float] = []  # request times, for the rpm limit
        self._inflight: dict[str, asyncio.Future] = {}  # key -> the answer of a request being sent

    @property
    def budget_reached(self) -> bool:
        return self.budget.reached

    async def _send(self, messages: list[dict[str, str]], extra: dict[str, Any]) -> Any:
        # every retry is ours (counted in `calls` and `retries`): the provider SDK's own retries are turned off
        own = {} if self._seeded else {"max_retries": 0}
        return await asyncio.wait_for(self._transport_fn()(model=self.model, messages=messages, **self.params,
                                                           **own, **extra), timeout=self.timeout)

    async def _throttle(self) -> None:
        if not self.rpm:
            return
        while True:
            now = time.monotonic()
            self._sent = [t for t in self._sent if now - t < 60]
            if len(self._sent) < self.rpm:
                self._sent.append(now)
                return
            await asyncio.sleep(60 - (now - self._sent[0]) + 0.01)

    async def _call(self, messages: list[dict[str, str]], key: str,
                    extra: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """The raw answer ({"text", "usage"}), from the cache or the provider; (None, False) on failure.

        A request whose twin (same key) is already in flight waits for the twin's answer instead of paying for
        it again (pairs in both orders, duplicate texts in a batch)."""
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit, True
        twin = self._inflight.get(key)
        if twin is not None:
            value = await asyncio.shield(twin)
            if value is not None:
                self.stats.cache_hits += 1
            return value, value is not None
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        value = None
        try:
            value = await self._fetch(messages, key, extra)
        finally:
            del self._inflight[key]
            future.set_result(value)
        return value, False

    async def _fetch(self, messages: list[dict[str, str]], key: str, extra: dict[str, Any]) -> dict[str, Any] | None:
        """Send with retries; the answer is committed to the cache before it is returned (None on failure)."""
        if self.budget_reached:
            self.stats.budget_skipped += 1
            self.budget.skip()
            return None
        for attempt in range(self.max_retries + 1):
            await self._throttle()
            self.stats.calls += 1
            self.stats.retries += attempt > 0
            self.cache.log_sent(key)
            try:
                resp = await self._send(messages, extra)
            except Exception as exc:  # noqa: BLE001 - classified below
                retry, wait = _retryable(exc)
                if not retry or attempt == self.max_retries:
                    self.stats.fail(failure_class(exc), describe_failure(exc))
                    return None
                delay = wait if wait is not None else self.backoff * 2**attempt
                await asyncio.sleep(delay * (1 + 0.25 * random.random()))
                continue
            text = resp.choices[0].message.content or ""
            usage = getattr(resp, "usage", None)
            value = {"text": text, "usage": {"prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                                             "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}}
            value["cost_usd"] = self._cost(resp)
            self.cache.put(key, value)  # persisted before it is used: a kill loses nothing that returned
            self.stats.prompt_tokens += value["usage"]["prompt_tokens"]
            self.stats.completion_tokens += value["usage"]["completion_tokens"]
            self.stats.cost_usd += value["cost_usd"]
            self.budget.spend(value["cost_usd"])
            return value
        return None

    def _cost(self, resp: Any) -> float:
        if self.price is not None:
            usage = getattr(resp, "usage", None)
            return ((getattr(usage, "prompt_tokens", 0) or 0) * self.price[0]
                    + (getattr(usage, "completion_tokens", 0) or 0) * self.price[1]) / 1e6
        try:
            import litellm

            return float(litellm.completion_cost(completion_response=resp, model=self.model) or 0.0)
        except Exception:  # noqa: BLE001 - models without a price (local servers) cost nothing
            return 0.0

    async def complete(self, messages: list[dict[str, str]], prompt_version: str = "", sample: int = 0,
                       schema: type[BaseModel] | None = None) -> Answer:
        extra: dict[str, Any] = {}
        if schema is not None and self.structured:
            extra["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema.__name__, "schema": schema.model_json_schema()}}
        params = {**self.params, **extra}
        key = cache_key(self.model, messages, params, prompt_version, sample, self.endpoint)
        value, cached = await self._call(messages, key, self._with_seed(extra, key))
        if value is None:
            return Answer(None, error="budget" if self.budget_reached else "failed")
        if not value["text"].strip():  # an empty answer is unusable output (and counts against max_failed)
            self.stats.dropped["empty_answer"] += 1
            return Answer(value["text"], error="empty_answer", cached=cached)
        if schema is None:
            return Answer(value["text"], cached=cached)
        data, reason = parse_json(value["text"], schema)
        if data is None:  # one retry with a stricter instruction
            strict = messages + [{"role": "user", "content": STRICT.format(schema=json.dumps(schema.model_json_schema()))}]
            strict_key = cache_key(self.model, strict, params, prompt_version, sample, self.endpoint)
            value, cached = await self._call(strict, strict_key, self._with_seed(extra, strict_key))
            if value is None:
                return Answer(None, error="budget" if self.budget_reached else "failed")
            data, reason = parse_json(value["text"], schema)
            if data is None:
                self.stats.dropped[reason] += 1
                return Answer(value["text"], error=reason, cached=cached)
        return Answer(value["text"], data=data, cached=cached)

    def preflight(self, attempts: int = 2) -> None:
        """One small request, not cached, before any real work: a wrong key, model name or server address fails
        in seconds (LLMFailure naming the class, model and server), not after a whole corpus was read."""
        messages = [{"role": "user", "content": "Reply with the word OK."}]

        async def once() -> None:
            extra = {**self._with_seed({}, "0" * 8), "max_tokens": 4}
            for attempt in range(attempts):
                try:
                    await asyncio.wait_for(self._transport_fn()(model=self.model, messages=messages,
                                                                **{**self.params, **extra}), timeout=self.timeout)
                    return
                except Exception as exc:  # noqa: BLE001 - classified
                    retry, _ = _retryable(exc)
                    if not retry or attempt == attempts - 1:
                        raise LLMFailure(self.model, self.params.get("api_base"), {failure_class(exc): 1},
                                         {failure_class(exc): describe_failure(exc)}, "the first request") from None
                    await asyncio.sleep(self.backoff)

        asyncio.run(once())

    def _transport_fn(self) -> Transport:
        if self._transport is None:
            import litellm

            litellm.suppress_debug_info = True  # no "Give Feedback" banners: failures are reported here
            self._transport = litellm.acompletion
        return self._transport

    def _with_seed(self, extra: dict[str, Any], key: str) -> dict[str, Any]:
        """Request params sent (not part of the key): a seed derived from the key for the embedded model."""
        return {**extra, "seed": int(key[:8], 16)} if self._seeded else extra

    def complete_many(self, requests: list[dict[str, Any]]) -> list[Answer]:
        """Run `complete(**request)` for every request, at most `concurrency` at a time."""

        async def run() -> list[Answer]:
            self._inflight = {}  # futures belong to this event loop
            gate = asyncio.Semaphore(self.concurrency)

            async def one(req: dict[str, Any]) -> Answer:
                async with gate:
                    return await self.complete(**req)

            return await asyncio.gather(*(one(r) for r in requests))

        return asyncio.run(run())
