"""wakefield's exceptions and warning categories, drawn once.

::

    WakefieldError
    ├── SpecError                 a workflow or config that does not validate
    │   └── WorkflowError         ... with file, line, column and field path
    ├── RegistryError             an unknown service kind or simulator
    ├── BusError                  talking to the bus failed
    │   ├── TopicError            a topic is missing or cannot be created
    │   ├── EventTooLargeError    an event is over the bus's size limit
    │   ├── BusUnavailableError   the broker cannot be reached
    │   └── CommitError           an offset commit was refused (rebalanced)
    ├── EventError                an event that cannot be decoded or is invalid
    │   └── TripDataError         recorded trip files missing or malformed
    ├── DatastoreError            reading or writing a dataset failed
    │   ├── DataRefError          a reference that is malformed or escapes the root
    │   └── IntegrityError        a dataset whose content hash does not match
    ├── ServiceError              a service's handler failed
    ├── SimulationError           a simulator failed as a whole
    └── RuntimeFailure            the run itself failed (Ray, timeouts)
        └── RunCancelled          the run was cancelled

Errors from Kafka, Ray and Zarr are translated where wakefield meets them
and chained with ``from``, so the original stays visible.

Warnings carry meaning, so users filter by it: ``PhysicsWarning`` for a
result that is computed but physically doubtful, ``ExtrapolationWarning``
for a model asked about inputs outside what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass


class WakefieldError(Exception):
    """The root of every error wakefield raises on purpose."""


class SpecError(WakefieldError):
    """A workflow, a service config or an event payload is not valid."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow file, located as precisely as known."""

    message: str
    path: str = ""
    file: str | None = None
    line: int | None = None
    column: int | None = None
    value: object = None
    allowed: str | None = None

    def __str__(self) -> str:
        where = self.file or "<workflow>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: "
        if self.path:
            text += f"{self.path}: "
        text += self.message
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        return text


class WorkflowError(SpecError):
    """A workflow file that does not load, with every problem found in it."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [str(p) for p in problems]
        head = "workflow is not valid" if len(lines) > 1 else lines[0]
        if len(lines) > 1:
            head += ":\n  " + "\n  ".join(lines)
        super().__init__(head)


class RegistryError(WakefieldError):
    """A plug-in (service kind or simulator) that is unknown or broken."""


class BusError(WakefieldError):
    """Talking to the bus failed."""


class TopicError(BusError):
    """A topic does not exist or could not be created."""


class EventTooLargeError(BusError):
    """An event is larger than the bus accepts; send bulk data by reference."""


class BusUnavailableError(BusError):
    """The bus (a Kafka broker) cannot be reached."""


class CommitError(BusError):
    """An offset commit was refused, usually because of a rebalance."""


class EventError(WakefieldError):
    """An event that cannot be decoded, or whose content is not valid."""


class TripDataError(EventError):
    """A recorded trip event whose files are missing, inconsistent or malformed."""


class DatastoreError(WakefieldError):
    """Reading or writing a dataset or artifact failed."""


class DataRefError(DatastoreError):
    """A data reference that is malformed or points outside the root."""


class IntegrityError(DatastoreError):
    """Stored content does not match the hash its reference carries."""


class ServiceError(WakefieldError):
    """A service's handler failed on an event."""


class SimulationError(WakefieldError):
    """A simulator failed as a whole (not one sample)."""


class RuntimeFailure(WakefieldError):
    """The run itself failed: an actor could not start, a time-out passed."""


class RunCancelled(RuntimeFailure):
    """The run was cancelled by a user."""


class WakefieldWarning(UserWarning):
    """The root of wakefield's warning categories."""


class PhysicsWarning(WakefieldWarning):
    """A result was computed but is physically doubtful."""


class ExtrapolationWarning(WakefieldWarning):
    """A model was asked about inputs outside its training ranges."""
