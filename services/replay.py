"""``replay``: stream the samples of a dataset as events, one by one, at a rate.

Live services (a trip classifier, a virtual diagnostic) are fed by streams
of single measurements.  ``replay`` makes such a stream from any dataset:
on a dataset-ready event (or from the ``dataset`` its config names) it
emits one event per sample along ``dim``, every ``interval`` seconds, in
order or in a seeded random order, ``count`` of them or all.

Each event carries its sample in one of two ways (``carry``):

``reference``
    the sample is written as a dataset of its own (the source's layout,
    ``dim`` of length 1) and the event, ``org.wakefield.dataset.ready``,
    refers to it;
``inline``
    the event, ``org.wakefield.sample``, carries the sample in its data
    under ``inline``, as :func:`inline_dataset` encodes it; a sample whose
    encoding is over ``inline_limit`` bytes is an error;
``auto``
    inline when the encoding fits ``inline_limit``, else by reference.

The inline encoding is xarray's dictionary form (``Dataset.to_dict``):
``{"dims": {...}, "coords": {name: {"dims", "data", "attrs"}},
"data_vars": {...}, "attrs": {...}}`` with a ``dtype`` per variable, and
float32 values written with the digits float32 holds (about 9 bytes a
value).  :func:`dataset_from_inline` reads it back.

Every event's data also says where the sample came from: ``source`` (the
dataset's URI), ``sample`` (its index there), ``position`` and ``total``
(its place in the stream).  Samples a simulation flagged (``status`` not 0)
are skipped unless ``skip_flagged`` is false.  With ``wait: true`` nothing
is emitted before an event arrives on the ``triggers`` port (for example a
model-ready event: replay once a model serves).

Replay is a source that ticks: each tick emits one sample.  The rate is
kept on average: an event that comes late (a loaded machine) is followed
by the next a little sooner, never within half an interval of it.  What it has
emitted is kept in the service's state, so an actor that restarts goes on
where it stopped and a tick that is run again emits the very same event.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import xarray as xr
from pydantic import Field, StrictBool

from wakefield.config import ByteSize, Duration, StrictModel
from wakefield.errors import EventError, ServiceError
from wakefield.events import DataRef, Event, json_dumps
from wakefield.service import DATASET_READY, HandlerContext, Service, ServiceContext

log = logging.getLogger(__name__)

SAMPLE = "org.wakefield.sample"
"""Type of an event that carries its sample inline."""

IDLE_SECONDS = 0.5
"""Seconds between ticks while there is nothing to replay."""


class ReplayConfig(StrictModel):
    dataset: str | None = None
    """A dataset in the datastore (its URI) replayed when the run starts."""
    dim: str = "sample"
    """The dimension whose entries are replayed one by one."""
    interval: Duration = 1.0
    """Seconds between events (``200ms``): the rate is 1 / interval."""
    count: int | None = Field(default=None, ge=1)
    """Events per dataset; absent: every sample."""
    order: Literal["sequential", "shuffled"] = "sequential"
    """``sequential`` from ``start`` on; ``shuffled`` in a seeded random order."""
    start: int = Field(default=0, ge=0)
    """First sample of a sequential replay."""
    seed: int = 0
    """Seeds the order of a shuffled replay."""
    skip_flagged: StrictBool = True
    """Skip samples whose ``status`` is not 0 (failed in a simulation)."""
    carry: Literal["reference", "inline", "auto"] = "reference"
    """How each event carries its sample (see the module's description)."""
    inline_limit: ByteSize = Field(default=512 * 1024, ge=1024, le=1_000_000)
    """Largest inline encoding of one sample, bytes (``512KiB``); the bus
    refuses events over about 1 MiB."""
    wait: StrictBool = False
    """Emit nothing until an event arrives on the ``triggers`` port."""


class Replay(Service):
    """Streams a dataset's samples as events, one every ``interval``."""

    kind = "replay"
    Config = ReplayConfig
    streaming = True
    summary = (
        "Stream a dataset's samples one by one as events at a rate (by reference "
        "or inline), in order or seeded random order."
    )
    inputs = {
        "datasets": "org.wakefield.dataset.ready: a dataset to replay",
        "triggers": "any event: starts a replay configured with wait: true",
    }
    outputs = {
        "samples": "one event per sample: org.wakefield.dataset.ready of a "
        "one-sample dataset, or org.wakefield.sample with the sample inline"
    }

    def __init__(self, config: StrictModel, context: ServiceContext) -> None:
        super().__init__(config, context)
        self._open: tuple[str, xr.Dataset, npt.NDArray[np.int64]] | None = None
        self._due: float | None = None

    def setup(self) -> None:
        config: ReplayConfig = self.config  # type: ignore[assignment]
        if config.dataset is not None and not self.context.datastore.exists(
            config.dataset
        ):
            raise ServiceError(
                f"replay: config dataset {config.dataset!r} is not a published "
                f"dataset in {self.context.datastore.url}; give the URI of one"
            )

    # Input events

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        state = self.context.load_state("replay")
        if port == "triggers":
            state["triggered"] = True
            log.info("replay triggered by %s (%s)", event.id, event.type)
        elif port == "datasets":
            if event.dataref is None or event.dataref.kind != "dataset":
                raise EventError(
                    f"event {event.id} ({event.type}) on datasets carries no "
                    "dataset reference; replay takes org.wakefield.dataset.ready"
                )
            queue = state.setdefault("queue", [])
            queue.append({"event": event.id, "ref": event.dataref.dump()})
            log.info("replay queued %s", event.dataref.uri)
        else:
            raise ServiceError(f"replay has no input port {port!r}")
        self.context.save_state("replay", state)

    # The stream

    def tick(self, ctx: HandlerContext) -> float | None:
        config: ReplayConfig = self.config  # type: ignore[assignment]
        number = int(ctx.event.data["tick"]) if ctx.event and ctx.event.data else 0
        state = self.context.load_state("replay")

        # A tick run again after a crash emits what it emitted the first time.
        last = state.get("last")
        if last is not None and last["tick"] == number:
            self._emit(ctx, DataRef.load(last["ref"]), last["position"])
            return self._delay(config.interval)

        if config.wait and not state.get("triggered"):
            return IDLE_SECONDS
        current = state.get("current")
        if current is None:
            current = self._next_dataset(state)
            if current is None:
                self.context.save_state("replay", state)
                return IDLE_SECONDS
        ref = DataRef.load(current["ref"])
        position = int(current["next"])
        total = self._emit(ctx, ref, position)

        current["next"] = position + 1
        state["last"] = {"tick": number, "ref": ref.dump(), "position": position}
        if position + 1 >= total:
            state.setdefault("finished", []).append(ref.uri)
            state["current"] = None
            log.info("replay of %s finished: %s events", ref.uri, total)
        else:
            state["current"] = current
        self.context.save_state("replay", state)
        return self._delay(config.interval)

    def _next_dataset(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """Take the next dataset to replay off the queue (the config's first)."""
        config: ReplayConfig = self.config  # type: ignore[assignment]
        if config.dataset is not None and not state.get("configured"):
            state["configured"] = True
            ref = self.context.datastore.ref(config.dataset)
            return {"ref": ref.dump(), "next": 0}
        queue = state.get("queue", [])
        if not queue:
            return None
        return {"ref": queue.pop(0)["ref"], "next": 0}

    def _emit(self, ctx: HandlerContext, ref: DataRef, position: int) -> int:
        """Emit the sample at ``position`` of ``ref``'s stream; returns its length."""
        config: ReplayConfig = self.config  # type: ignore[assignment]
        ds, order = self._dataset(ref)
        if not order.size:
            raise ServiceError(
                f"replay: {ref.uri} has no samples to replay along {config.dim!r} "
                "(all flagged, or start past the end)"
            )
        index = int(order[position])
        sample = ds.isel({config.dim: [index]}).load()
        origin = {
            "source": ref.uri,
            "sample": index,
            "position": position,
            "total": int(order.size),
        }

        inline = None
        if config.carry != "reference":
            inline = inline_dataset(sample, keep_attrs=False)
            size = len(json_dumps(inline))
            if size > config.inline_limit:
                if config.carry == "inline":
                    raise ServiceError(
                        f"replay: sample {index} of {ref.uri} is {size} bytes inline, "
                        f"over inline_limit {config.inline_limit}; raise the limit "
                        "(at most about 1 MiB) or use carry: reference or auto"
                    )
                inline = None
        if inline is not None:
            ctx.emit("samples", SAMPLE, {**origin, "inline": inline})
        else:
            sample.attrs.update(replayed_from=ref.uri, replayed_sample=index)
            written = ctx.datastore.write_dataset(
                sample, ctx.dataset_uri(f"sample-{index}.zarr")
            )
            ctx.emit("samples", DATASET_READY, origin, dataref=written)
        ctx.progress(position + 1, order.size, f"sample {index} of {ref.uri}")
        return int(order.size)

    def _dataset(self, ref: DataRef) -> tuple[xr.Dataset, npt.NDArray[np.int64]]:
        """The dataset (opened once) and the order its samples are replayed in."""
        if self._open is not None and self._open[0] == ref.uri:
            return self._open[1], self._open[2]
        config: ReplayConfig = self.config  # type: ignore[assignment]
        ds = self.context.datastore.open_dataset(ref)
        if config.dim not in ds.dims:
            raise ServiceError(
                f"replay: {ref.uri} has no dimension {config.dim!r}; its dimensions "
                f"are {sorted(map(str, ds.dims))}. Set dim to one of them."
            )
        order = replay_order(ds, config)
        self._open = (ref.uri, ds, order)
        return ds, order

    def _delay(self, interval: float) -> float:
        """Seconds to the next tick, keeping the rate on average: an event
        that came late is followed sooner, but never within half an interval."""
        now = time.monotonic()
        if self._due is None or now - self._due > interval / 2:
            self._due = now  # first event, or fallen behind: start afresh
        self._due += interval
        return max(interval / 2, self._due - now)


def replay_order(ds: xr.Dataset, config: ReplayConfig) -> npt.NDArray[np.int64]:
    """Indices along ``config.dim`` in the order they are replayed."""
    n = ds.sizes[config.dim]
    candidates = np.arange(n, dtype=np.int64)
    if config.skip_flagged and "status" in ds and ds["status"].dims == (config.dim,):
        candidates = candidates[np.asarray(ds["status"].values) == 0]
    if config.order == "shuffled":
        rng = np.random.default_rng(config.seed)
        candidates = rng.permutation(candidates)
    else:
        candidates = candidates[candidates >= config.start]
    if config.count is not None:
        candidates = candidates[: config.count]
    return candidates


# The inline encoding


def inline_dataset(ds: xr.Dataset, *, keep_attrs: bool = True) -> dict[str, Any]:
    """A small dataset as JSON-ready data (xarray's dictionary form).

    float32 values are written with float32's own shortest digits, so they
    read back bit for bit at about half the size of float64 text.
    """
    body: dict[str, Any] = {
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
        "coords": {str(name): _variable(var) for name, var in ds.coords.items()},
        "data_vars": {str(name): _variable(var) for name, var in ds.data_vars.items()},
        "attrs": _jsonable(dict(ds.attrs)) if keep_attrs else {},
    }
    return body


def dataset_from_inline(body: Any) -> xr.Dataset:
    """Read what :func:`inline_dataset` wrote; a malformed body is an EventError."""
    if not isinstance(body, dict) or "data_vars" not in body:
        found = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise EventError(
            "an inline dataset is an object with data_vars (and coords, dims, "
            f"attrs), as xarray's Dataset.to_dict writes it; got {found}"
        )
    try:
        coords = {
            name: _from_variable(var) for name, var in body.get("coords", {}).items()
        }
        data = {name: _from_variable(var) for name, var in body["data_vars"].items()}
        return xr.Dataset(data, coords=coords, attrs=dict(body.get("attrs") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise EventError(f"the inline dataset cannot be read: {exc}") from exc


def _variable(var: xr.DataArray) -> dict[str, Any]:
    values = np.asarray(var.values)
    if values.dtype == np.float32:
        # float32 -> its shortest decimal text -> the float64 of that text.
        data: Any = values.astype(str).astype(np.float64).tolist()
    elif values.dtype.kind in "US":
        data = values.astype(str).tolist()
    else:
        data = values.tolist()
    return {
        "dims": [str(d) for d in var.dims],
        "dtype": values.dtype.str if values.dtype.kind not in "US" else "str",
        "data": data,
        "attrs": _jsonable(dict(var.attrs)),
    }


def _from_variable(var: dict[str, Any]) -> xr.Variable:
    dtype = var.get("dtype")
    values = np.asarray(var["data"], dtype=None if dtype in (None, "str") else dtype)
    return xr.Variable(tuple(var["dims"]), values, dict(var.get("attrs") or {}))


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as plain JSON data (numpy values to lists and numbers)."""
    out: dict[str, Any] = json.loads(json_dumps(attrs))
    return out
