"""Errors the runtime reports to people: each says what is wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class TriedCandidate(Protocol):
    """What a `NoFitError` keeps of each candidate (the planner's `Reason` records)."""

    @property
    def candidate(self) -> str: ...

    @property
    def outcome(self) -> str: ...

    @property
    def detail(self) -> str: ...


class AimError(Exception):
    """Base class. `hint` tells the reader what to do; the CLI prints both and exits non-zero."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class DetectionError(AimError):
    """The accelerators given to this process cannot be used as one inventory."""


class ModelFactsError(AimError):
    """The model directory or its config cannot be read."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint or "the model directory must hold the Hugging Face "
                                          "config.json (and safetensors weights) of the model; "
                                          "download it again if it is damaged")


class RecipeError(AimError):
    """A recipe file is invalid; the message names the file, the field and the value."""


class OverrideError(AimError):
    """An override (CLI flag or AIM_* variable) asks for something that cannot work."""


class SettingError(OverrideError):
    """An `AIM_*` variable (or the flag that stands for it) holds a value that is not valid."""


class PlanError(AimError):
    """The planner cannot produce a plan (for a reason other than memory)."""


class NoFitError(PlanError):
    """No plan fits the model into the devices; the message lists what would fit.

    `reasons` keeps every candidate that was tried, for `--explain`.
    """

    exit_code = 3

    def __init__(self, message: str, hint: str = "",
                 reasons: Sequence[TriedCandidate] = ()) -> None:
        super().__init__(message, hint)
        self.reasons = reasons
