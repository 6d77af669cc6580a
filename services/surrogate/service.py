"""``surrogate``: train PyTorch surrogates of a scan and serve their predictions.

On a dataset-ready event it trains a model (see :mod:`.training`), writes
the artifact, its plots and optionally a LUME export, announces it with
``org.wakefield.model.ready`` on ``models``, and serves it.  On a predict
request it answers on ``predictions`` with the served model; a request
that cannot be answered (missing settings, wrong shapes, settings out of
range under the ``error`` policy) gets an ``org.wakefield.prediction.error``
response, and the service goes on.  On a model-ready event of another
service it loads that model and serves it if it is newer and maps the same
variables: a trainer and a server can be two services, so that requests
keep being answered while a newer model trains.

Requests that arrive before any model is served are kept (up to
``pending``) in the service's state in the datastore, so a restarted actor
still has them, and are answered as soon as a model is served; the
response's id then derives from the request, as if answered at once.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from wakefield.errors import DatastoreError, ServiceError, SpecError
from wakefield.events import DataRef, Event
from wakefield.service import MODEL_READY, HandlerContext, Service, dataset_of

from .config import SurrogateConfig
from .errors import ExtrapolationError, RequestError
from .model import SurrogateModel
from .serving import PREDICTION, PREDICTION_ERROR, ServedModel, parse_request, respond
from .training import EpochReport, train

log = logging.getLogger(__name__)

PENDING = "pending"
"""Name of the service state that keeps requests waiting for a model."""


class Surrogate(Service):
    """Trains surrogates of scans and serves their predictions."""

    kind = "surrogate"
    Config = SurrogateConfig
    summary = (
        "Train a PyTorch surrogate of a scan (MLP and image decoder; ensemble or "
        "MC dropout) and serve its predictions with uncertainties."
    )
    inputs = {
        "datasets": "org.wakefield.dataset.ready of a scan: trains a model on it",
        "models": "org.wakefield.model.ready of a surrogate: serves it if newer",
        "requests": "predict requests: {settings: {name: [values]}} or a list of "
        "records; optional samples, images",
    }
    outputs = {
        "models": "org.wakefield.model.ready with the artifact and its test metrics",
        "predictions": "org.wakefield.prediction (or .prediction.error) per request",
    }

    def setup(self) -> None:
        config: SurrogateConfig = self.config  # type: ignore[assignment]
        self.served = ServedModel()
        self._current = ""
        store = self.context.datastore
        if config.model is not None:
            try:
                model = SurrogateModel.load(store, config.model)
            except DatastoreError as exc:
                raise ServiceError(
                    f"config model {config.model!r} cannot be served: {exc}"
                ) from exc
            self.served.offer(model)

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        self._current = event.id
        if port == "datasets":
            self._train(event, ctx)
        elif port == "models":
            self._receive(event, ctx)
        elif port == "requests":
            self._request(event, ctx)
        else:
            raise ServiceError(f"surrogate has no input port {port!r}")

    # Training

    def _train(self, event: Event, ctx: HandlerContext) -> None:
        config: SurrogateConfig = self.config  # type: ignore[assignment]
        dataset = dataset_of(event)
        store = ctx.datastore
        uri = ctx.dataset_uri(config.name)
        folder = posixpath.dirname(uri)

        if store.exists(uri):  # handled before a crash: keep what was published
            model = SurrogateModel.load(store, uri)
        else:
            ds = store.open_dataset(dataset)
            try:
                model, _ = train(ds, config, self._on_epoch(ctx), dataset=dataset)
            except SpecError as exc:
                raise ServiceError(f"cannot train on {dataset.uri}: {exc}") from exc
            model.save(store, uri)
        assert model.ref is not None and model.metrics is not None

        summary: dict[str, Any] = {
            "settings": [s.name for s in model.settings],
            "outputs": [o.name for o in model.outputs],
            "image": model.image.name if model.image else None,
            "uncertainty": model.uncertainty.method,
            "members": len(model.ensemble.members),
            "dataset": dataset.dump(),
            "metrics": model.metrics.summary(),
        }
        if config.plots:
            summary["plots"] = self._plots(model, store, ds_ref=dataset, folder=folder)
        if config.lume:
            summary["lume"] = self._export_lume(model, store, uri + ".lume").dump()
        ctx.emit("models", MODEL_READY, summary, dataref=model.ref)
        log.info(
            "model %s ready: worst MAE %s %% of range",
            model.ref.uri,
            summary["metrics"]["max_mae_percent"],
        )
        self.served.offer(model, own=True)
        self._answer_pending(ctx)

    def _on_epoch(self, ctx: HandlerContext) -> Any:
        def report(r: EpochReport) -> None:
            done = r.member * r.epochs + r.epoch + 1
            ctx.progress(
                done,
                r.members * r.epochs,
                f"member {r.member + 1}/{r.members} epoch {r.epoch + 1}: "
                f"training {r.train_loss:.3g}, validation {r.validation_loss:.3g}",
            )

        return report

    def _plots(
        self, model: SurrogateModel, store: Any, *, ds_ref: DataRef, folder: str
    ) -> list[str]:
        from . import plots
        from .data import good_samples, split

        metrics = model.metrics
        assert metrics is not None and model.training is not None
        ds = store.open_dataset(ds_ref)
        samples = good_samples(ds, model.variables)
        _, val_rows, test_rows = split(
            len(samples), model.training.training.split, model.training.training.seed
        )
        part = samples.take(test_rows if metrics.evaluated_on == "test" else val_rows)
        prediction = model.predict(
            part.x, policy={s.name: "clip" for s in model.settings}
        )
        written = []
        for name, figure in (
            ("learning_curve.png", plots.learning_curve(metrics)),
            ("predicted_vs_true.png", plots.parity(model, part, prediction, metrics)),
            ("images.png", plots.images(model, part, prediction)),
        ):
            if figure is not None:
                written.append(store.write_file(figure, f"{folder}/plots/{name}"))
        return written

    def _export_lume(self, model: SurrogateModel, store: Any, uri: str) -> DataRef:
        from .lume import lume_files

        ref: DataRef = store.write_artifact(
            lume_files(model),
            uri,
            meta={
                "format": "lume-torch",
                "trusted_only": True,
                "model": model.ref.dump() if model.ref else None,
            },
        )
        return ref

    # Models from elsewhere

    def _receive(self, event: Event, ctx: HandlerContext) -> None:
        if event.dataref is None or event.dataref.kind != "artifact":
            raise ServiceError(
                f"event {event.id} ({event.type}) on models carries no artifact "
                "reference; the models port takes org.wakefield.model.ready"
            )
        current = self.served.model
        if current is not None and current.ref == event.dataref:
            return
        # Loaded completely before it is offered, so requests never wait on it.
        model = SurrogateModel.load(ctx.datastore, event.dataref)
        try:
            self.served.offer(model)
        except RequestError as exc:
            raise ServiceError(str(exc)) from exc
        self._answer_pending(ctx)

    # Requests

    def _request(self, event: Event, ctx: HandlerContext) -> None:
        config: SurrogateConfig = self.config  # type: ignore[assignment]
        model = self.served.model
        if model is None:
            if len(self._waiting()) < config.pending:
                self._keep_pending(event)
                return
            self._error(
                ctx,
                event,
                RequestError(
                    f"no model is served yet and {config.pending} requests already wait "
                    "(config pending); send it again once a model is ready"
                ),
                None,
            )
            return
        self._answer(event, ctx, model)

    def _answer(
        self,
        request: Event,
        ctx: HandlerContext,
        model: SurrogateModel,
        *,
        deferred: bool = False,
    ) -> None:
        """Emit the response to ``request``; ``deferred``: a kept request,
        answered in the handler of another event."""
        config: SurrogateConfig = self.config  # type: ignore[assignment]
        try:
            parsed = parse_request(request.data)
            data, ref = respond(
                model,
                parsed,
                policy=config.out_of_range,
                max_samples=config.max_request,
                inline=config.inline,
                store=ctx.datastore,
                uri=ctx.dataset_uri(f"prediction-{request.id}.zarr"),
            )
        except RequestError as exc:
            self._error(ctx, request, exc, model, deferred=deferred)
            return
        data = {"request": request.id, **data}
        ctx.emit(
            "predictions",
            PREDICTION,
            data,
            dataref=ref,
            subject=request.subject,
            cause=request if deferred else None,
        )
        log.info(
            "answered request %s: %s samples with %s",
            request.id,
            data["samples"],
            model.ref.uri if model.ref else "an unsaved model",
        )

    def _error(
        self,
        ctx: HandlerContext,
        request: Event,
        exc: RequestError,
        model: SurrogateModel | None,
        *,
        deferred: bool = False,
    ) -> None:
        data: dict[str, Any] = {
            "request": request.id,
            "model": model.ref.dump() if model is not None and model.ref else None,
            "error": {"type": type(exc).__name__, "message": str(exc)},
        }
        if isinstance(exc, ExtrapolationError):
            data["out_of_range"] = exc.flagged
        ctx.emit(
            "predictions",
            PREDICTION_ERROR,
            data,
            subject=request.subject,
            cause=request if deferred else None,
        )
        log.info("request %s refused: %s", request.id, exc)

    # Requests kept while no model is served

    def _waiting(self) -> list[dict[str, Any]]:
        """Kept requests not yet answered by a handler that finished."""
        items: list[dict[str, Any]] = self.context.load_state(PENDING).get("items", [])
        current = self._current
        return [
            item
            for item in items
            if item["answered_by"] is None
            or item["answered_by"] == current
            or not self.context.is_handled(item["answered_by"])
        ]

    def _keep_pending(self, event: Event) -> None:
        items = self._waiting()
        if not any(item["event"]["id"] == event.id for item in items):
            items.append({"event": event.model_dump(mode="json"), "answered_by": None})
            self.context.save_state(PENDING, {"items": items})
        log.info("request %s waits for a model (%s waiting)", event.id, len(items))

    def _answer_pending(self, ctx: HandlerContext) -> None:
        model = self.served.model
        items = self._waiting()
        if model is None or not items:
            return
        for item in items:
            request = Event.model_validate(item["event"])
            self._answer(request, ctx, model, deferred=True)
            # Answered for good once this handler's outputs are recorded.
            item["answered_by"] = self._current
        self.context.save_state(PENDING, {"items": items})
