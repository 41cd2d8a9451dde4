"""Pipeline steps, one module per stage of the pipeline; each registers its functions by name."""

from sublim.steps import base, data, effects, evaluate, filter, generate, student, summary, teacher  # noqa: F401
