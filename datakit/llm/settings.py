"""A recipe's `llm:` section: the defaults of its synthesis steps and the run's one spending cap."""
from __future__ import annotations

from pydantic import Field

from embedkit.configfile import Strict


class LLMSettings(Strict):
    """Defaults for every synthesis step of a recipe, and the run's one spending cap."""

    model: str = Field("embedded/smollm2", description="litellm model string; embedded/smollm2 runs offline")
    api_base: str | None = Field(None, description="an OpenAI-compatible server, with model 'openai/<name>'")
    concurrency: int | None = Field(None, gt=0, description="requests in flight per step; default 4, or 32 for "
                                    "the embedded model (its requests are generated in batches)")
    rpm: int | None = Field(None, gt=0, description="requests per minute, per step")
    max_retries: int = Field(5, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    max_budget_usd: float | None = Field(None, ge=0, description="stop sending requests once spent")
    price_per_million: tuple[float, float] | None = Field(
        None, description="(input, output) USD per million tokens, for models litellm has no price for")
    cache: str | None = Field(None, description="answers cache (SQLite); default $DATAKIT_CACHE/llm/answers.sqlite")
    preflight: bool = Field(True, description="send each synthesis step's model one small request before the "
                            "build reads anything: a wrong key, model or api_base fails in seconds")
