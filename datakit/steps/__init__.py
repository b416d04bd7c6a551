"""Recipe steps: small objects with one job, registered by name (`datakit.steps.base`), one module each.

`StepSpec` is the typed union of every step's config, keyed by `type`: a recipe's steps are validated into it once
(`datakit.recipe`), and `make_step` builds a step from its config object (executors ship `model_dump()` to workers
and rebuild the config there with `step_config`).
"""
from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from datakit.steps import (  # noqa: F401 - importing a step module registers it
    augment, decontaminate, dedup, filter, generate_queries, llm_negatives, mine, paraphrase)
from datakit.steps.base import (DROP_WARN, STEPS, Step, StepConfig, StepContext, StepFailed,  # noqa: F401
                                Stream, register)

StepSpec = Annotated[Union[tuple(cls.Config for cls in STEPS.values())], Field(discriminator="type")]
_SPEC = TypeAdapter(StepSpec)


def step_config(raw: dict[str, Any]) -> StepConfig:
    """One step's config from its mapping (ValidationError naming the bad key, or an unknown `type`)."""
    return _SPEC.validate_python(raw)


def make_step(config: StepConfig, ctx: StepContext) -> Step:
    return STEPS[config.type](config, ctx)
