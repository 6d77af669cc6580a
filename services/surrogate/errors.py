"""The surrogate kind's errors, as branches of wakefield's tree::

SpecError
└── RequestError          a predict request that cannot be answered as sent
    └── ExtrapolationError  settings outside the training ranges (policy error)
DatastoreError
└── ArtifactError         a model artifact that is malformed or of another format
"""

from __future__ import annotations

from wakefield.errors import DatastoreError, SpecError


class RequestError(SpecError):
    """A predict request that cannot be answered as sent."""


class ExtrapolationError(RequestError):
    """Settings outside a model's training ranges where the policy is ``error``."""

    def __init__(self, message: str, flagged: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.flagged = flagged
        """Which samples and settings are out of range."""


class ArtifactError(DatastoreError):
    """A model artifact that is malformed, incomplete or of another format."""
