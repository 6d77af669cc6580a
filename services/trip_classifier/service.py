"""``trip-classifier``: learn SRF cavity trips from labelled waveforms, then
name each trip live as it arrives.

On a labelled dataset-ready event (``datasets``, e.g. a ``simulation`` of
the ``srf-cavity`` simulator) it trains the CNN and the forests (seeded,
stratified splits, class weights; see :mod:`.training`), measures them on
held-out events, publishes the model artifact with ``metrics.json`` in it
and PNG plots beside it, and announces it on ``models`` with
``org.wakefield.model.ready``.  The model is promoted to live use only if
the gate passes (every fault type's recall at least its floor, the cavity
accuracy at least its floor); otherwise the event says ``promoted: false``
and why, and the previous promoted model, if any, keeps serving.  The
promoted model's reference is kept in the service's state, so a restarted
actor serves it again at once; ``model`` in the config names one to serve
from the start.

Trip events on ``trips`` carry their waveforms by reference (a dataset of
one or several trip events, as the simulator and the recorder reader lay
them out) or inline under ``data.inline`` (xarray's dictionary form, see
:func:`wakefield.services.replay.inline_dataset`; at most
``inline_max_values`` numbers in ``waveform``).  Each trip event gets one
``org.wakefield.trip.classified`` event per trip it holds, on ``results``:
the cavity and the fault type, their confidences and class probabilities,
each model's own call, and the features that drove the decision (the
forest's path contributions to the probability of the named fault type).

Trip events that arrive before any model is promoted are kept (the inline
ones written to the datastore first) in the service's state and classified
as soon as one is; nothing accepted is lost.  One that cannot be read fails
its handler with the reason, so the runtime retries it and dead-letters it;
the service goes on.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import xarray as xr
from pydantic import Field, StrictBool

from wakefield.config import StrictModel
from wakefield.errors import DatastoreError, EventError, ServiceError
from wakefield.events import DataRef, Event
from wakefield.service import (
    MODEL_READY,
    HandlerContext,
    Service,
    ServiceContext,
    dataset_of,
)
from wakefield.services.replay import dataset_from_inline

from .features import REQUIRED_SIGNALS
from .plots import plot_confusion, plot_feature_importance, plot_learning_curves
from .serving import TripModel, trip_waveforms
from .training import TrainConfig, TrainingResult, train_trip_classifier

log = logging.getLogger(__name__)

CLASSIFIED = "org.wakefield.trip.classified"
"""Type of a result: one trip event named."""
FAILED = "org.wakefield.trip.error"
"""Type of the answer to a kept trip event that the promoted model cannot read."""


class TripClassifierConfig(StrictModel):
    training: TrainConfig = TrainConfig()
    """How the models are trained, combined and judged (``gate``: the floors
    a model must reach to be promoted)."""
    model: str | None = None
    """A model artifact in the datastore (its URI) served from the start."""
    top_features: int = Field(default=5, ge=0, le=50)
    """Features reported with each result, largest contribution first."""
    inline_max_values: int = Field(default=65_536, ge=1, le=131_072)
    """Most numbers an inline trip's waveform may hold (8 cavities x 4 signals
    x 2,048 samples by default); larger trips travel by reference."""
    pending_limit: int = Field(default=10_000, ge=1)
    """Trip events kept while no model is promoted; one more is refused."""
    name: str = Field(default="trip-classifier", pattern=r"^[A-Za-z0-9._-]+$")
    """Folder name of the model artifact under the event's datastore path."""
    plots: StrictBool = True
    """Write confusion matrices, feature importances and the learning curve."""


class TripClassifier(Service):
    """Trains trip classifiers and names each trip event as it arrives."""

    kind = "trip-classifier"
    Config = TripClassifierConfig
    streaming = True
    summary = (
        "Train a CNN and a forest on labelled SRF trip waveforms (promoted only "
        "above recall floors), then name the faulted cavity and fault type of "
        "each trip event live, with confidences and the features behind it."
    )
    inputs = {
        "datasets": "org.wakefield.dataset.ready of labelled trip events: trains",
        "trips": "trip events: a dataset reference, or data.inline (one or more "
        "trips in the (sample,) cavity, signal, time layout)",
    }
    outputs = {
        "models": "org.wakefield.model.ready: the artifact, metrics, plots, and "
        "whether it was promoted (and why not)",
        "results": "org.wakefield.trip.classified, one per trip",
    }

    def __init__(self, config: StrictModel, context: ServiceContext) -> None:
        super().__init__(config, context)
        self.model: TripModel | None = None

    @classmethod
    def render(cls, event: Event) -> str | None:
        """One line per trip: the call, its confidences, and the truth if known."""
        data = event.data if isinstance(event.data, dict) else {}
        if event.type != CLASSIFIED or "fault" not in data:
            return None
        trip = data.get("trip", {})
        where = f"sample {trip['sample']}" if "sample" in trip else trip.get("event")
        line = (
            f"{where}: {data['fault']} ({data['fault_confidence']:.2f}) in cavity "
            f"{data['cavity']} ({data['cavity_confidence']:.2f})"
        )
        truth = data.get("truth")
        if truth:
            right = (
                truth["fault"] == data["fault"] and truth["cavity"] == data["cavity"]
            )
            line += f"; truth {truth['fault']} in {truth['cavity']}"
            line += "" if right else " (wrong)"
        return line

    # Life

    def setup(self) -> None:
        """Serve the promoted model of this run again, or the config's."""
        config: TripClassifierConfig = self.config  # type: ignore[assignment]
        store = self.context.datastore
        state = self.context.load_state("model")
        try:
            if "promoted" in state:
                self.model = TripModel.load(store, DataRef.load(state["promoted"]))
            elif config.model is not None:
                self.model = TripModel.load(store, config.model)
        except DatastoreError as exc:
            raise ServiceError(
                f"trip-classifier cannot load its model: {exc}; give the URI of "
                "an artifact this kind published (config model)"
            ) from exc
        if self.model is not None:
            log.info("serving %s", self.model.ref.uri if self.model.ref else "?")

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        if port == "datasets":
            self._learn(event, ctx)
        elif port == "trips":
            self._trip(event, ctx)
        else:
            raise ServiceError(f"trip-classifier has no input port {port!r}")
        self._answer_kept(ctx)

    # Learning

    def _learn(self, event: Event, ctx: HandlerContext) -> None:
        config: TripClassifierConfig = self.config  # type: ignore[assignment]
        dataset = dataset_of(event)
        store = ctx.datastore
        uri = ctx.dataset_uri(config.name)
        if store.exists(uri):  # handled before a crash: keep what was published
            model = TripModel.load(store, uri)
            plots = model.info.get("plots", [])
        else:
            result = self._train(store.open_dataset(dataset), ctx)
            plots = self._plots(result, ctx) if config.plots else []
            model = result.model({"dataset": dataset.dump(), "plots": plots})
            report = result.files()["metrics.json"]
            model.save(
                store,
                uri,
                extra={"metrics.json": report},
                meta={"summary": model.info, "dataset": dataset.dump()},
            )
        assert model.ref is not None

        promoted = bool(model.info.get("promoted"))
        previous = self.model.ref.uri if self.model and self.model.ref else None
        if promoted:
            self.context.save_state(
                "model", {"promoted": model.ref.dump(), "by": event.id}
            )
            self.model = model
            log.info("promoted trip classifier %s", model.ref.uri)
        else:
            log.warning(
                "trip classifier %s not promoted: %s",
                model.ref.uri,
                "; ".join(model.info.get("reasons", [])),
            )
        ctx.emit(
            "models",
            MODEL_READY,
            {
                **model.info,
                "promoted": promoted,
                "serving": (
                    self.model.ref.uri if self.model and self.model.ref else None
                ),
                "previous": previous,
                "plots": plots,
            },
            dataref=model.ref,
        )

    def _train(self, ds: xr.Dataset, ctx: HandlerContext) -> TrainingResult:
        config: TripClassifierConfig = self.config  # type: ignore[assignment]

        def on_epoch(epoch: int, epochs: int, history: dict[str, float]) -> None:
            ctx.progress(
                epoch,
                epochs,
                f"CNN epoch {epoch}: validation loss {history['validation_loss']:.3f}",
            )

        try:
            return train_trip_classifier(ds.load(), config.training, on_epoch=on_epoch)
        except (KeyError, ValueError) as exc:
            raise ServiceError(f"cannot train on this dataset: {exc}") from exc

    def _plots(self, result: TrainingResult, ctx: HandlerContext) -> list[str]:
        """PNGs beside the artifact: confusion matrices, importances, learning."""
        served = result.served
        written = []
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder)
            files = [
                plot_confusion(
                    result.metrics[f"{served}_fault"],
                    local / "confusion_fault.png",
                    title=f"fault type ({served})",
                ),
                plot_confusion(
                    result.metrics[f"{served}_cavity"],
                    local / "confusion_cavity.png",
                    title=f"cavity ({served})",
                ),
                plot_feature_importance(
                    result.fault_forest.feature_names,
                    result.fault_forest.importances,
                    local / "importance_fault.png",
                ),
                plot_learning_curves(result.history, local / "learning.png"),
            ]
            for path in files:
                written.append(
                    ctx.datastore.write_file(
                        path.read_bytes(), ctx.dataset_uri(f"plots/{path.name}")
                    )
                )
        return written

    # Trips

    def _trip(self, event: Event, ctx: HandlerContext) -> None:
        config: TripClassifierConfig = self.config  # type: ignore[assignment]
        ds = self._trip_dataset(event, ctx)
        if self.model is not None:
            self._classify(event, ds, ctx)
            return

        # No model yet: keep the trip (inline ones written down first).
        waveform, _ = trip_waveforms(ds, REQUIRED_SIGNALS)
        kept = self.context.load_state("kept").get("items", [])
        if any(item["event"]["id"] == event.id for item in kept):
            return
        if len(kept) >= config.pending_limit:
            raise ServiceError(
                f"{len(kept)} trip events are already kept waiting for a promoted "
                f"model (pending_limit {config.pending_limit}); train one first"
            )
        ref = event.dataref
        if ref is None:
            ref = ctx.datastore.write_dataset(ds, ctx.dataset_uri("trip.zarr"))
        body = event.model_copy(update={"data": _without_inline(event.data)})
        kept.append(
            {
                "event": body.model_dump(mode="json"),
                "ref": ref.dump(),
                "answered_by": None,
            }
        )
        self.context.save_state("kept", {"items": kept})
        ctx.progress(
            0,
            0,
            f"{len(kept)} trip events ({waveform.shape[0]} trips) kept "
            "until a model is promoted",
        )

    def _trip_dataset(self, event: Event, ctx: HandlerContext) -> xr.Dataset:
        config: TripClassifierConfig = self.config  # type: ignore[assignment]
        if event.dataref is not None:
            if event.dataref.kind != "dataset":
                raise EventError(
                    f"trip event {event.id} refers to an {event.dataref.kind}; a "
                    "trip event refers to a dataset of waveforms"
                )
            return ctx.datastore.open_dataset(event.dataref).load()
        inline = event.data.get("inline") if isinstance(event.data, dict) else None
        if inline is None:
            raise EventError(
                f"trip event {event.id} ({event.type}) carries no waveforms: give "
                "a dataref to a dataset with waveform (sample, cavity, signal, "
                "time), or data.inline in xarray's dictionary form"
            )
        ds = dataset_from_inline(inline)
        size = ds["waveform"].size if "waveform" in ds else 0
        if size > config.inline_max_values:
            raise EventError(
                f"trip event {event.id} holds {size} waveform values inline, over "
                f"inline_max_values {config.inline_max_values}; send larger trips "
                "by reference to a dataset"
            )
        return ds

    def _classify(
        self,
        event: Event,
        ds: xr.Dataset,
        ctx: HandlerContext,
        *,
        deferred: bool = False,
    ) -> None:
        """One result per trip in ``ds``."""
        config: TripClassifierConfig = self.config  # type: ignore[assignment]
        assert self.model is not None and self.model.ref is not None
        verdicts = self.model.classify(ds, top=config.top_features)
        truth = _labels(ds)
        source = event.dataref.uri if event.dataref else "inline"
        for i, verdict in enumerate(verdicts):
            data = {
                "trip": {
                    "event": event.id,
                    "trip": i,
                    "of": len(verdicts),
                    "source": source,
                    **_origin(event),
                },
                **verdict,
                "model": self.model.ref.uri,
            }
            if truth is not None:
                data["truth"] = truth[i]
            # A kept event is answered later, by another event's handler: the
            # result's id then derives from the trip event (one per trip).
            cause = _cause(event, i, len(verdicts)) if deferred else None
            ctx.emit("results", CLASSIFIED, data, subject=verdict["fault"], cause=cause)
        log.info(
            "classified %s trips of %s: %s",
            len(verdicts),
            event.id,
            ", ".join(f"{v['fault']} in {v['cavity']}" for v in verdicts),
        )

    def _answer_kept(self, ctx: HandlerContext) -> None:
        """Classify every kept trip event not yet answered by a finished handler."""
        if self.model is None:
            return
        state = self.context.load_state("kept")
        items = state.get("items", [])
        if not items:
            return
        current = ctx.event.id if ctx.event is not None else ""
        waiting, done = [], []
        for item in items:
            answered = item["answered_by"]
            if answered is not None and answered != current:
                if self.context.is_handled(answered):
                    done.append(item)  # answered for good: forget it
                    continue
            waiting.append(item)
        for number, item in enumerate(waiting):
            trip = Event.model_validate(item["event"])
            ctx.progress(number, len(waiting), f"classifying kept trip {trip.id}")
            try:
                ds = ctx.datastore.open_dataset(DataRef.load(item["ref"])).load()
                self._classify(trip, ds, ctx, deferred=True)
            except (EventError, DatastoreError) as exc:
                ctx.emit(
                    "results",
                    FAILED,
                    {"trip": {"event": trip.id}, "error": str(exc)},
                    cause=trip,
                )
            item["answered_by"] = current
        self.context.save_state("kept", {"items": waiting})
        if waiting:
            log.info("classified %s kept trip events", len(waiting))


def _labels(ds: xr.Dataset) -> list[dict[str, str]] | None:
    """The true labels of a labelled (simulated) trip dataset, if it has them."""
    if "fault" not in ds or "cavity_label" not in ds:
        return None
    faults = ds["fault"].attrs.get("categories")
    cavities = ds["cavity_label"].attrs.get("categories")
    if not faults or not cavities:
        return None
    fault = ds["fault"].values.reshape(-1)
    cavity = ds["cavity_label"].values.reshape(-1)
    return [
        {"fault": str(faults[int(f)]), "cavity": str(cavities[int(c)])}
        for f, c in zip(fault, cavity, strict=True)
    ]


def _origin(event: Event) -> dict[str, Any]:
    """Where a replayed trip came from (its source dataset and sample)."""
    data = event.data if isinstance(event.data, dict) else {}
    return {k: data[k] for k in ("sample", "position") if k in data}


def _without_inline(data: Any) -> Any:
    if isinstance(data, dict) and "inline" in data:
        return {k: v for k, v in data.items() if k != "inline"}
    return data


def _cause(event: Event, index: int, count: int) -> Event:
    """The event a deferred result answers: the trip event itself, or for the
    i-th of several trips in one event, a stand-in whose id names both."""
    if count == 1:
        return event
    return event.model_copy(
        update={
            "id": f"{event.id}/{index}",
            "correlationid": event.correlationid or event.id,
        }
    )
