"""The ledger: which events a service has handled, and what it emitted.

It makes handling idempotent by event id.  Before a service publishes what a
handler emitted, the ledger records those events (state ``emitting``);
once they are all published it records ``done``.  When an event comes back
(a redelivery after a crash or a rebalance, or a duplicate publish):

- ``done``: it is skipped;
- ``emitting``: the recorded events are published again (with their same
  ids, so their consumers drop any duplicate) and the handler is not run;
- not in the ledger: the handler runs.

Entries live in the datastore, beside the data they describe, so they
survive actor restarts and are shared by a service's replicas.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from ..datastore import Datastore
from ..events import Event

log = logging.getLogger(__name__)

State = Literal["emitting", "done", "deadlettered"]


@dataclass
class Entry:
    state: State
    outputs: list[tuple[str, str | None, str]] = field(default_factory=list)
    """(topic, key, event JSON) of every event the handler emitted."""
    meta: dict[str, Any] = field(default_factory=dict)

    def events(self) -> list[tuple[str, Event, str | None]]:
        """(topic, event, key) of every recorded output, ready to publish."""
        return [(topic, Event.from_json(raw), key) for topic, key, raw in self.outputs]


class Ledger:
    """Handled events of one service of one workflow."""

    def __init__(self, datastore: Datastore, workflow: str, service: str) -> None:
        self.datastore = datastore
        self.prefix = f"_ledger/{workflow}/{service}"

    def _path(self, event_id: str) -> str:
        digest = hashlib.sha1(event_id.encode()).hexdigest()
        return self.datastore.resolve(f"{self.prefix}/{digest[:2]}/{digest}.json")

    def get(self, event_id: str) -> Entry | None:
        path = self._path(event_id)
        try:
            with self.datastore.fs.open(path, "rb") as fh:
                raw = json.loads(fh.read())
        except FileNotFoundError:
            return None
        return Entry(
            raw["state"],
            [tuple(o) for o in raw.get("outputs", [])],
            raw.get("meta", {}),
        )

    def put(self, event_id: str, entry: Entry) -> None:
        """Record an entry; the write replaces the file whole (write, then rename)."""
        path = self._path(event_id)
        body = json.dumps(
            {
                "event": event_id,
                "state": entry.state,
                "outputs": entry.outputs,
                "meta": entry.meta,
            }
        ).encode()
        fs = self.datastore.fs
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self.datastore.local:
            tmp = f"{path}.tmp"
            with fs.open(tmp, "wb") as fh:
                fh.write(body)
            fs.mv(tmp, path)
        else:  # object stores replace whole objects on every put
            with fs.open(path, "wb") as fh:
                fh.write(body)

    def state_of(self, name: str) -> dict[str, Any]:
        """Small persistent state of the service (e.g. a source's tick count)."""
        entry = self.get(f"state:{name}")
        return entry.meta if entry else {}

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        self.put(f"state:{name}", Entry("done", meta=state))
