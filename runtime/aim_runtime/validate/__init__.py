"""`aim-runtime validate --url URL`: does this deployment work? A client of the server's public
HTTP interface that imports nothing of serving/: reach and readiness, the API key, the served
names and recipe (the canary check: `--expect-recipe`), the OpenAI contract (shapes, streaming
with usage, `n`, logprobs, error shapes), what the served plan declares (its tool and reasoning
parsers, read from `aim_plan_info`), structured outputs, adapters, metrics advancing, and an
optional load smoke. A line per check; exit 0 when none failed, 1 otherwise, 2 for usage.

A failure is the server's (a wrong shape, a refused key, a recipe that is not the expected one,
output that does not parse where decoding is constrained); what depends on the model (a
`length` finish, reasoning text) only warns.
"""

from aim_runtime.validate.checks import CHECKS, Outcome, Target, run

__all__ = ["CHECKS", "Outcome", "Target", "run"]
