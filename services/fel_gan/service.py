"""``fel-gan``: train a conditional GAN on simulated SASE pulses and sample
new pulses on request, once it has proved faithful.

On a dataset-ready event of a ``sase`` scan (``datasets``) it holds out a
share of the shots at every condition, trains the WGAN-GP on the rest
(see :mod:`.training`), and compares generated with held-out simulated
pulses condition by condition (:mod:`.fidelity`: pulse energy and its
distribution, number of modes, spike count and width, mean profile,
spectral width, diversity on a fixed noise batch).  The generator is
published as an artifact (``config.json``, ``generator.pt`` read with
``weights_only=True``, ``fidelity.json``) and announced on ``models`` with
the fidelity table.  It is promoted to the sampler only if every
condition passes every threshold; a collapsed or unfaithful generator is
kept back and the event says why.

A sampling request on ``requests`` (``{conditions: {name: value}, shots:
n, seed: s}``) gets an ``org.wakefield.fel.samples`` event on ``samples``
with a dataset of the generated pulses by reference (power, field,
spectrum and pulse energy per shot) and their statistics.  A request that
cannot be answered (unknown or missing conditions, values outside the
training ranges, too many shots, no faithful generator) gets an
``org.wakefield.fel.samples.error`` answer, and the service goes on.
Requests that arrive before any generator has been judged are kept in
the service's state and answered once one has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
)

from wakefield.config import StrictModel
from wakefield.datastore import Datastore
from wakefield.errors import DatastoreError, EventError, ServiceError, SpecError
from wakefield.events import DataRef, Event
from wakefield.service import (
    MODEL_READY,
    HandlerContext,
    Service,
    ServiceContext,
    dataset_of,
)

from ..simulators.sase import spectrum
from . import fidelity, plots
from .fidelity import FidelityThresholds, Pulses, SpikeCriteria
from .model import FelGan
from .training import PulseDataset, TrainingConfig, from_files, to_files, train

log = logging.getLogger(__name__)

SAMPLES = "org.wakefield.fel.samples"
"""Type of the answer to a sampling request: generated pulses by reference."""
SAMPLES_ERROR = "org.wakefield.fel.samples.error"
"""Type of the answer to a sampling request that could not be served."""
FORMAT = "wakefield.fel-gan/1"
FIDELITY_FILE = "fidelity.json"


class FelGanConfig(StrictModel):
    conditions: list[str] = Field(
        default=["peak_current", "bunch_length", "energy_spread"], min_length=1
    )
    """Settings of the scan the generator is conditioned on; each must take
    at least two values in the dataset."""
    training: TrainingConfig = TrainingConfig()
    holdout: float = Field(default=0.5, gt=0, lt=1)
    """Share of the shots at every condition held out (seeded) for the
    fidelity check; the rest train the generator."""
    check_shots: int = Field(default=4000, ge=16)
    """Generated shots per condition compared with the held-out ones."""
    thresholds: FidelityThresholds = FidelityThresholds()
    """Largest differences a generator may show and still be promoted."""
    spikes: SpikeCriteria = SpikeCriteria()
    model: str | None = None
    """A generator artifact in the datastore (its URI) served from the start."""
    max_shots: int = Field(default=100_000, ge=1)
    """Most shots one sampling request may ask for."""
    allow_outside: StrictBool = False
    """Answer requests whose conditions lie outside the training ranges
    (flagged as extrapolated); by default they get an error."""
    pending_limit: int = Field(default=1000, ge=1)
    """Requests kept while no generator has been judged; one more is refused."""
    name: str = Field(default="fel-gan", pattern=r"^[A-Za-z0-9._-]+$")
    """Folder name of the generator artifact under the event's datastore path."""
    plots: StrictBool = True
    """Write generated against simulated pulses and distributions as PNG."""
    plot_conditions: int = Field(default=3, ge=0)
    """Conditions plotted (spread over the tested ones)."""

    @field_validator("conditions")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"each condition may appear once; repeated: {twice}")
        return names


class SampleRequest(StrictModel):
    """A sampling request: ``shots`` pulses at one condition."""

    conditions: dict[str, StrictFloat | StrictInt]
    """Condition name -> value, in the units of the scan."""
    shots: StrictInt = Field(default=100, ge=1)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    """Noise seed; by default derived from the request's id, so a request
    handled again gives the same pulses."""


class FelGanService(Service):
    """Trains the pulse GAN, keeps back unfaithful generators, samples pulses."""

    kind = "fel-gan"
    Config = FelGanConfig
    streaming = True
    summary = (
        "Train a conditional WGAN-GP on simulated SASE pulses, promote it only "
        "if its statistics match held-out pulses, and sample pulses on request."
    )
    inputs = {
        "datasets": "org.wakefield.dataset.ready of a sase scan: trains and judges",
        "requests": "sampling requests: {conditions: {name: value}, shots, seed}",
    }
    outputs = {
        "models": "org.wakefield.model.ready: the generator, its fidelity table, "
        "and whether it was promoted (and why not)",
        "samples": "org.wakefield.fel.samples (dataset of pulses) or "
        ".fel.samples.error, one per request",
    }

    def __init__(self, config: StrictModel, context: ServiceContext) -> None:
        super().__init__(config, context)
        self.gan: FelGan | None = None
        self.ref: DataRef | None = None

    def setup(self) -> None:
        """Serve this run's promoted generator again, or the config's."""
        config: FelGanConfig = self.config  # type: ignore[assignment]
        state = self.context.load_state("model")
        try:
            if "promoted" in state:
                self._serve(DataRef.load(state["promoted"]))
            elif config.model is not None:
                self._serve(self.context.datastore.ref(config.model))
        except DatastoreError as exc:
            raise ServiceError(
                f"fel-gan cannot load its generator: {exc}; give the URI of an "
                "artifact this kind published (config model)"
            ) from exc

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        if port == "datasets":
            self._learn(event, ctx)
        elif port == "requests":
            self._request(event, ctx)
        else:
            raise ServiceError(f"fel-gan has no input port {port!r}")
        self._answer_kept(ctx)

    @classmethod
    def render(cls, event: Event) -> str | None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == MODEL_READY and "fidelity" in data:
            verdict = "promoted" if data["promoted"] else "kept back"
            lines = [f"pulse generator {verdict} ({len(data['fidelity'])} conditions)"]
            lines += [f"  {row}" for row in _table(data["fidelity"])]
            lines += [f"  reason: {r}" for r in data["reasons"][:5]]
            lines += [f"  plot: {p}" for p in data.get("plots", [])[:4]]
            return "\n".join(lines)
        if event.type == SAMPLES:
            where = event.dataref.uri if event.dataref else "?"
            stats = data.get("statistics", {})
            return (
                f"{data['shots']} pulses at {data['conditions']}: mean energy "
                f"{stats.get('mean_energy', float('nan')):.3g} J, M "
                f"{stats.get('modes', float('nan')):.2f}, spikes "
                f"{stats.get('spike_count', float('nan')):.1f}\n  dataset: {where}"
            )
        if event.type == SAMPLES_ERROR:
            return f"sampling request refused: {data.get('error')}"
        return None

    # Learning

    def _learn(self, event: Event, ctx: HandlerContext) -> None:
        config: FelGanConfig = self.config  # type: ignore[assignment]
        dataset = dataset_of(event)
        store = ctx.datastore
        uri = ctx.dataset_uri(config.name)
        if store.exists(uri):  # judged before a crash: keep what was published
            gan = _load(store, store.ref(uri))
            report = json.loads(store.read_artifact(uri, FIDELITY_FILE))
            ref = store.ref(uri)
        else:
            data = self._pulses(store.open_dataset(dataset))
            training_part, held_out = split(data, config.holdout, config.training.seed)
            ctx.progress(
                0,
                config.training.epochs,
                f"training on {len(training_part.field)} shots",
            )
            gan = self._train(training_part, ctx)
            report = self._judge(gan, held_out, ctx)
            report["dataset"] = dataset.dump()
            report["shots"] = {
                "training": len(training_part.field),
                "held_out": len(held_out.field),
            }
            files = {**to_files(gan), FIDELITY_FILE: json.dumps(report).encode()}
            meta = {
                "format": FORMAT,
                "conditions": gan.config.condition_names,
                "accepted": report["accepted"],
                "dataset": dataset.dump(),
            }
            ref = store.write_artifact(files, uri, meta=meta)

        previous = self.ref.uri if self.ref else None
        if report["accepted"]:
            self.gan, self.ref = gan, ref
            self.context.save_state("model", {"promoted": ref.dump(), "by": event.id})
            log.info("promoted pulse generator %s", ref.uri)
        else:
            state = self.context.load_state("model")
            self.context.save_state(
                "model", {**state, "judged": True, "reasons": report["reasons"]}
            )
            log.warning(
                "pulse generator %s kept back: %s",
                ref.uri,
                "; ".join(report["reasons"]),
            )
        ctx.emit(
            "models",
            MODEL_READY,
            {
                # The learning curve stays in the artifact: events stay small.
                **{k: v for k, v in report.items() if k != "history"},
                "promoted": bool(report["accepted"]),
                "serving": self.ref.uri if self.ref else None,
                "previous": previous,
            },
            dataref=ref,
        )

    def _pulses(self, ds: xr.Dataset) -> PulseDataset:
        config: FelGanConfig = self.config  # type: ignore[assignment]
        if "status" in ds:  # flagged samples never train or judge
            ds = ds.isel(sample=np.flatnonzero(ds["status"].values == 0))
        if "time" in ds.dims and ds.sizes["time"] < 16:
            raise ServiceError(
                f"the dataset's time axis has {ds.sizes['time']} samples; a pulse "
                "generator needs at least 16 (simulate with a larger n_time)"
            )
        not_settings = [
            n for n in config.conditions if n in ds and ds[n].dims != ("sample",)
        ]
        if not_settings:
            raise ServiceError(
                f"conditions {not_settings} are not per-sample settings of the scan; "
                "name settings such as peak_current, bunch_length, energy_spread"
            )
        # Only the fields and the conditions are read, not the scan's power
        # and spectra: two of its four per-shot arrays instead of all four.
        fields = ("field_real", "field_imag", "photon_energy")
        wanted = [n for n in (*fields, *config.conditions) if n in ds]
        try:
            data = PulseDataset.from_xarray(ds[wanted].load(), config.conditions)
        except (DatastoreError, SpecError) as exc:
            raise ServiceError(f"cannot train a pulse generator: {exc}") from exc
        if len(data.field) == 0:
            raise ServiceError(
                "the dataset holds no usable shots: every sample is flagged or "
                "non-finite"
            )
        return data

    def _train(self, data: PulseDataset, ctx: HandlerContext) -> FelGan:
        config: FelGanConfig = self.config  # type: ignore[assignment]
        epochs = config.training.epochs

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            self.history.append({"epoch": epoch, **metrics})
            ctx.progress(
                epoch, epochs, f"GAN epoch {epoch}: W {metrics['wasserstein']:.3f}"
            )

        self.history: list[dict[str, float]] = []
        try:
            return train(data, config.training, on_epoch)
        except SpecError as exc:
            raise ServiceError(f"cannot train a pulse generator: {exc}") from exc

    def _judge(
        self, gan: FelGan, held_out: PulseDataset, ctx: HandlerContext
    ) -> dict[str, Any]:
        """Generated against held-out pulses at every condition, the verdict,
        and the plots."""
        config: FelGanConfig = self.config  # type: ignore[assignment]
        conditions = held_out.unique_conditions()
        shown = (
            _spread(len(conditions), config.plot_conditions) if config.plots else set()
        )
        reports, figures = [], []
        with tempfile.TemporaryDirectory() as folder:
            for i, row in enumerate(conditions):
                condition = dict(zip(held_out.names, map(float, row), strict=True))
                simulated = _as_pulses(held_out.at(row), gan)
                generated = gan.sample_pulses(
                    condition, config.check_shots, seed=config.training.seed + 7
                )
                ratio = fidelity.fixed_noise_diversity(gan, condition, simulated)
                reports.append(
                    fidelity.compare(
                        condition,
                        simulated,
                        generated,
                        criteria=config.spikes,
                        diversity_ratio=ratio,
                    )
                )
                ctx.progress(i + 1, len(conditions), "fidelity check")
                if i in shown:
                    title = _label(condition)
                    figures += [
                        plots.plot_pulses(
                            simulated,
                            generated,
                            Path(folder) / f"pulses-{i}.png",
                            title=title,
                        ),
                        plots.plot_distributions(
                            simulated,
                            generated,
                            Path(folder) / f"distributions-{i}.png",
                            title=title,
                        ),
                    ]
            if config.plots and self.history:
                figures.append(
                    plots.plot_learning_curve(
                        self.history, Path(folder) / "learning.png"
                    )
                )
            written = [
                ctx.datastore.write_file(
                    Path(f).read_bytes(), ctx.dataset_uri(f"plots/{Path(f).name}")
                )
                for f in figures
            ]
        verdict = fidelity.verdict(reports, config.thresholds)
        return {
            "accepted": verdict.accepted,
            "collapsed": verdict.collapsed,
            "reasons": verdict.reasons,
            "fidelity": [_jsonable(r.row()) for r in reports],
            "thresholds": config.thresholds.dump(),
            "history": self.history,
            "plots": written,
        }

    def _serve(self, ref: DataRef) -> None:
        self.gan = _load(self.context.datastore, ref)
        self.ref = ref
        log.info("serving pulse generator %s", ref.uri)

    # Sampling

    def _request(self, event: Event, ctx: HandlerContext) -> None:
        config: FelGanConfig = self.config  # type: ignore[assignment]
        if self.gan is not None or self.context.load_state("model").get("judged"):
            self._sample(event, ctx)
            return
        kept = self.context.load_state("kept").get("items", [])
        if any(item["event"]["id"] == event.id for item in kept):
            return
        if len(kept) >= config.pending_limit:
            raise ServiceError(
                f"{len(kept)} sampling requests already wait for a generator "
                f"(pending_limit {config.pending_limit})"
            )
        kept.append({"event": event.model_dump(mode="json"), "answered_by": None})
        self.context.save_state("kept", {"items": kept})
        ctx.progress(
            0, 0, f"{len(kept)} sampling requests kept until a generator is judged"
        )

    def _sample(
        self, event: Event, ctx: HandlerContext, *, deferred: bool = False
    ) -> None:
        """Answer one request: pulses by reference, or the reason there are none."""
        cause = event if deferred else None
        try:
            request, outside = self._check(event)
        except EventError as exc:
            log.warning("sampling request %s refused: %s", event.id, exc)
            ctx.emit(
                "samples",
                SAMPLES_ERROR,
                {"request": event.id, "error": str(exc)},
                cause=cause,
            )
            return
        assert self.gan is not None and self.ref is not None
        seed = request.seed if request.seed is not None else _seed(event.id)
        ds = samples_dataset(self.gan, request.conditions, request.shots, seed)
        ds.attrs.update({"generator": self.ref.uri, "request": event.id})
        uri = f"runs/{ctx.run_id}/{self.context.service}/{event.id}/samples.zarr"
        ref = ctx.datastore.write_dataset(ds, uri, chunks={"shot": 1000})
        pulses = Pulses(
            ds["power"].values[:2000], self.gan.config.dt,
            ds["spectrum"].values[:2000], self.gan.photon_energy,
        )  # fmt: skip
        stats = fidelity.statistics(pulses, self._config.spikes)
        ctx.emit(
            "samples",
            SAMPLES,
            {
                "request": event.id,
                "conditions": request.conditions,
                "shots": request.shots,
                "seed": seed,
                "generator": self.ref.uri,
                "extrapolated": outside,
                "statistics": _jsonable(stats.__dict__),
            },
            dataref=ref,
            cause=cause,
        )
        log.info("sampled %s pulses for %s into %s", request.shots, event.id, uri)

    @property
    def _config(self) -> FelGanConfig:
        return self.config  # type: ignore[return-value]

    def _check(self, event: Event) -> tuple[SampleRequest, list[str]]:
        """The request, validated against the served generator."""
        config = self._config
        if self.gan is None:
            reasons = self.context.load_state("model").get("reasons", [])
            raise EventError(
                "no faithful pulse generator is served: the one trained was kept "
                "back by the fidelity check" + (f" ({reasons[0]})" if reasons else "")
            )
        try:
            request = SampleRequest.load(event.data or {})
        except ValidationError as exc:
            raise EventError(f"not a sampling request: {_errors(exc)}") from None
        names = self.gan.config.condition_names
        missing = sorted(set(names) - set(request.conditions))
        unknown = sorted(set(request.conditions) - set(names))
        if missing or unknown:
            raise EventError(
                f"conditions must name exactly {names}; missing {missing}, "
                f"unknown {unknown}"
            )
        bad = sorted(k for k, v in request.conditions.items() if not np.isfinite(v))
        if bad:
            raise EventError(f"conditions {bad} are not finite numbers")
        if request.shots > config.max_shots:
            raise EventError(
                f"{request.shots} shots asked, at most {config.max_shots} per request"
            )
        outside = [
            f"{c.name}={request.conditions[c.name]:.4g} (trained on {c.low:.4g} to {c.high:.4g} {c.unit})"
            for c in self.gan.config.conditions
            if not c.low <= request.conditions[c.name] <= c.high
        ]
        if outside and not config.allow_outside:
            raise EventError(
                f"conditions outside the training ranges: {', '.join(outside)}; "
                "set allow_outside: true to sample there anyway (extrapolation)"
            )
        return request, outside

    def _answer_kept(self, ctx: HandlerContext) -> None:
        """Answer every kept request not yet answered by a finished handler."""
        if self.gan is None and not self.context.load_state("model").get("judged"):
            return
        items = self.context.load_state("kept").get("items", [])
        if not items:
            return
        current = ctx.event.id if ctx.event is not None else ""
        waiting = [
            item
            for item in items
            if item["answered_by"] in (None, current)
            or not self.context.is_handled(item["answered_by"])
        ]
        for item in waiting:
            request = Event.model_validate(item["event"])
            try:
                self._sample(request, ctx, deferred=True)
            except Exception as exc:  # one bad kept request must not jam the rest
                log.exception("kept sampling request %s failed", request.id)
                ctx.emit(
                    "samples",
                    SAMPLES_ERROR,
                    {"request": request.id, "error": f"{type(exc).__name__}: {exc}"},
                    cause=request,
                )
            item["answered_by"] = current
        self.context.save_state("kept", {"items": waiting})


def split(
    data: PulseDataset, holdout: float, seed: int
) -> tuple[PulseDataset, PulseDataset]:
    """The shots at every condition, shuffled (seeded) and split into a
    training part and a held-out part of share ``holdout``."""
    rng = np.random.default_rng(seed)
    train_rows, held_rows = [], []
    for row in data.unique_conditions():
        (index,) = np.nonzero(np.all(data.conditions == row, axis=1))
        index = rng.permutation(index)
        k = int(round(holdout * len(index)))
        if k < 2 or len(index) - k < 2:
            where = ", ".join(
                f"{n}={v:.4g}" for n, v in zip(data.names, row, strict=True)
            )
            raise ServiceError(
                f"only {len(index)} shots at {where}: the fidelity check needs at "
                f"least 2 held out and 2 to train on (holdout {holdout}); give the "
                "scan's design more repeats"
            )
        held_rows.append(index[:k])
        train_rows.append(index[k:])

    def part(rows: list[np.ndarray]) -> PulseDataset:
        index = np.sort(np.concatenate(rows))
        return PulseDataset(
            data.conditions[index], data.field[index], data.dt,
            data.photon_energy, data.names, data.units,
        )  # fmt: skip

    return part(train_rows), part(held_rows)


def samples_dataset(
    gan: FelGan, conditions: dict[str, float], shots: int, seed: int
) -> xr.Dataset:
    """``shots`` generated pulses at one condition as a Dataset on (shot, time)
    and (shot, photon_energy), in the simulator's units."""
    row = np.tile(gan.condition_row(conditions), (shots, 1))
    field = gan.sample_field(row, seed=seed)
    power = np.abs(field) ** 2
    units = {c.name: c.unit for c in gan.config.conditions}
    ds = xr.Dataset(
        {
            "power": (
                ("shot", "time"),
                power,
                {"units": "W", "long_name": "FEL power"},
            ),
            "field_real": (("shot", "time"), field.real, {"units": "sqrt(W)"}),
            "field_imag": (("shot", "time"), field.imag, {"units": "sqrt(W)"}),
            "spectrum": (
                ("shot", "photon_energy"),
                spectrum(field, gan.config.dt).astype(np.float32),
                {"units": "J/eV", "long_name": "FEL spectrum"},
            ),
            "pulse_energy": (
                ("shot",),
                power.sum(axis=1, dtype=np.float64) * gan.config.dt,
                {"units": "J", "long_name": "FEL pulse energy"},
            ),
        },
        coords={
            "time": ("time", gan.time, {"units": "s"}),
            "photon_energy": ("photon_energy", gan.photon_energy, {"units": "eV"}),
        },
        attrs={
            "conditions": json.dumps(conditions),
            "condition_units": json.dumps(units),
            "seed": seed,
            "source": "wakefield fel-gan generator",
        },
    )
    return ds


def _load(store: Datastore, ref: DataRef) -> FelGan:
    meta = store.artifact_meta(ref)
    if meta.get("format") != FORMAT:
        raise DatastoreError(
            f"{ref.uri} is not a fel-gan generator (format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    files = {
        name: store.read_artifact(ref, name) for name in ("config.json", "generator.pt")
    }
    return from_files(files, ref.uri)


def _as_pulses(field: np.ndarray, gan: FelGan) -> Pulses:
    return Pulses(
        np.abs(field) ** 2, gan.config.dt, spectrum(field, gan.config.dt),
        gan.photon_energy,
    )  # fmt: skip


def _spread(n: int, k: int) -> set[int]:
    """``k`` indices spread evenly over ``range(n)``."""
    if k <= 0 or n == 0:
        return set()
    return {int(i) for i in np.linspace(0, n - 1, min(k, n)).round()}


def _label(condition: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in condition.items())


def _seed(event_id: str) -> int:
    return int(hashlib.sha256(event_id.encode()).hexdigest()[:8], 16)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    """The fidelity rows as text: simulated -> generated of the judged statistics."""
    lines = []
    for row in rows:
        cells = [
            f"{name} {row[f'{name}_sim']:.3g} -> {row[f'{name}_gen']:.3g} "
            f"({row[f'{name}_rel']:.1%})"
            for name in ("mean_energy", "modes", "spike_count")
        ]
        lines.append("; ".join(cells))
    return lines


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (float(v) if isinstance(v, np.floating | np.integer) else v)
        for k, v in values.items()
    }


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors()
    )
