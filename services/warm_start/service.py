"""``warm-start``: settings for a target beam, from an inverse model refined by
a local optimiser.

The service learns from two events: a scan's dataset-ready event (it trains
the inverse model, outputs to settings, on the scan) and a surrogate's
model-ready event (the forward model it optimises against).  A tuning
request names target values for some outputs; the service

1. flags targets outside what the surrogate was trained on;
2. predicts settings with the inverse model: the warm start;
3. refines them with ``scipy.optimize.minimize`` (Nelder-Mead by default;
   Powell, COBYLA, or L-BFGS-B with gradients from the surrogate), every
   proposed point checked against the settings' limits first;
4. on request, runs the same search from the nominal settings (a cold
   start), to show what the warm start buys;
5. emits the settings, the outputs they give, the distance to the target,
   the evaluations used, whether it converged, and the trace.

Requests that arrive before both models are ready are kept in the service's
state and answered as soon as they are; nothing accepted is lost.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, StrictBool, model_validator

from wakefield.config import StrictModel
from wakefield.errors import ServiceError
from wakefield.events import DataRef, Event
from wakefield.service import MODEL_READY, HandlerContext, Service, ServiceContext
from wakefield.variables import Setting

from .inverse import InverseConfig, InverseModel, train_inverse
from .optimize import Method, SafeObjective, Target, TuneResult, tune

log = logging.getLogger(__name__)

RESULT = "org.wakefield.tuning.result"


class TargetSpec(StrictModel):
    value: float
    """The wanted value, in the output's unit."""
    tolerance: float | None = Field(default=None, gt=0)
    """Absolute, in the output's unit."""
    relative: float | None = Field(default=None, gt=0)
    """Instead of ``tolerance``: a fraction of ``value`` (0.02 is 2 %).
    With neither, ``default_tolerance`` of the output's range in the scan."""
    weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _one_tolerance(self) -> TargetSpec:
        if self.tolerance is not None and self.relative is not None:
            raise ValueError("give tolerance (absolute) or relative, not both")
        if self.relative is not None and self.value == 0:
            raise ValueError("a relative tolerance needs a non-zero value")
        return self


class TuningRequest(StrictModel):
    """What a tuning request's data holds."""

    name: str | None = None
    targets: dict[str, TargetSpec | float] = Field(min_length=1)
    current: dict[str, float] | None = None
    """The machine's present settings, reported beside the answer."""
    evaluator: Literal["surrogate", "simulator"] | None = None
    optimizer: Method | None = None
    max_evaluations: int | None = Field(default=None, ge=1)
    cold: StrictBool | None = None
    """Also search from the nominal settings, to compare."""


class WarmStartConfig(StrictModel):
    targets: list[str] = Field(min_length=1)
    """Outputs the inverse model learns from (and requests may target)."""
    settings: list[str] | None = None
    """Settings to tune; default: every setting of the scan."""
    inverse: InverseConfig = InverseConfig()
    optimizer: Method = "nelder-mead"
    max_evaluations: int = Field(default=300, ge=1)
    out_of_bounds: Literal["clip", "refuse"] = "clip"
    """What happens to a proposed point outside the settings' limits."""
    default_tolerance: float = Field(default=0.01, gt=0)
    """Tolerance of a target that names none, as a fraction of the output's range in the scan."""
    step: float = Field(default=0.1, gt=0, le=1)
    """First step of the search, as a fraction of each setting's half range."""
    evaluator: Literal["surrogate", "simulator"] = "surrogate"
    simulator: str | None = None
    """For ``evaluator: simulator``: the simulator (and ``simulator_options``) to evaluate with."""
    simulator_options: dict[str, Any] = {}
    cold_start: StrictBool = False
    """Compare every answer with a cold start from the nominal settings."""
    requests: list[TuningRequest] = []
    """Requests answered as soon as the models are ready (for batch runs)."""
    plots: StrictBool = True


class WarmStart(Service):
    """Finds settings for target outputs: inverse model, then a local optimiser."""

    kind = "warm-start"
    Config = WarmStartConfig
    summary = (
        "Settings for target outputs: an inverse model's warm start refined by a "
        "scipy optimiser against the surrogate or the simulator."
    )
    inputs = {
        "datasets": "a scan's dataset-ready event: trains the inverse model",
        "models": "a surrogate's model-ready event: the model to optimise against",
        "requests": "tuning requests: targets, and optionally evaluator, optimizer, cold",
    }
    outputs = {"results": "org.wakefield.tuning.result, one per request"}

    def __init__(self, config: StrictModel, context: ServiceContext) -> None:
        super().__init__(config, context)
        self.inverse: InverseModel | None = None
        self.surrogate: Any = None
        self.scan_ranges: dict[str, tuple[float, float]] = {}
        self.simulator: Any = None

    @classmethod
    def render(cls, event: Event) -> str | None:
        """A tuning result as a small table: targets, warm and cold answers."""
        data = event.data if isinstance(event.data, dict) else {}
        if event.type != RESULT or "targets" not in data:
            return None
        runs = [("warm", data)] + ([("cold", data["cold"])] if data.get("cold") else [])
        lines = [
            f"{data.get('name') or event.subject or event.id}: {data['optimizer']} on the "
            f"{data['evaluator']}"
        ]
        header = f"  {'output':<20}{'target':>12}{'tolerance':>11}"
        header += "".join(f"{label:>12}" for label, _ in runs)
        lines.append(header)
        for name, target in data["targets"].items():
            row = f"  {name:<20}{target['value']:>12.4g}{target['tolerance']:>11.3g}"
            row += "".join(f"{r['outputs'][name]:>12.4g}" for _, r in runs)
            lines.append(row)
        for label, r in runs:
            state = "reached" if r["converged"] else "not reached"
            lines.append(
                f"  {label} start: {state} after {r['evaluations']} evaluations "
                f"(objective {r['start_objective']:.3g} -> {r['objective']:.3g})"
            )
        settings = ", ".join(f"{k} {v:.4g}" for k, v in data["settings"].items())
        lines.append(f"  settings: {settings}")
        lines += [f"  warning: {flag}" for flag in data.get("flags", [])]
        if data.get("plot"):
            lines.append(f"  plot: {data['plot']}")
        return "\n".join(lines)

    # Life

    def setup(self) -> None:
        """Reload what earlier handlers learned (the actor may have restarted)."""
        state = self.context.load_state("models")
        store = self.context.datastore
        if "inverse" in state:
            ref = DataRef.load(state["inverse"])
            self.inverse = InverseModel.from_files(
                {
                    name: store.read_artifact(ref, name)
                    for name in ("weights.pt", "inverse.json")
                }
            )
            self.scan_ranges = {k: tuple(v) for k, v in state.get("ranges", {}).items()}
        if "surrogate" in state:
            self.surrogate = _load_surrogate(store, DataRef.load(state["surrogate"]))

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        if port == "datasets":
            self._learn_inverse(event, ctx)
        elif port == "models":
            if event.type != MODEL_READY or event.dataref is None:
                raise ServiceError(
                    f"expected a {MODEL_READY} event with a reference, got {event.type}"
                )
            self._learn_surrogate(event, ctx)
        else:
            self._accept(event, ctx)
        self._answer_pending(ctx)

    # Learning

    def _learn_inverse(self, event: Event, ctx: HandlerContext) -> None:
        if event.dataref is None:
            raise ServiceError(f"dataset event {event.id} carries no reference")
        config: WarmStartConfig = self.config  # type: ignore[assignment]
        ds = ctx.datastore.open_dataset(event.dataref).load()
        settings = _scan_settings(ds, config.settings)
        epochs = config.inverse.epochs
        model, metrics = train_inverse(
            ds,
            settings,
            config.targets,
            config.inverse,
            on_epoch=lambda epoch, loss: ctx.progress(
                epoch, epochs, f"inverse model, loss {loss:.3g}"
            ),
        )
        ref = ctx.datastore.write_artifact(
            model.to_files(),
            ctx.dataset_uri("inverse"),
            meta={
                "metrics": {k: v for k, v in metrics.items() if k != "curve"},
                "dataset": event.dataref.dump(),
            },
        )
        good = ds["status"].values == 0 if "status" in ds else slice(None)
        ranges = {
            o: (
                float(np.nanmin(ds[o].values[good])),
                float(np.nanmax(ds[o].values[good])),
            )
            for o in config.targets
        }
        state = self.context.load_state("models")
        self.context.save_state(
            "models", {**state, "inverse": ref.dump(), "ranges": ranges}
        )
        self.inverse, self.scan_ranges = model, ranges
        log.info("inverse model ready: %s", ref.uri)

    def _learn_surrogate(self, event: Event, ctx: HandlerContext) -> None:
        config: WarmStartConfig = self.config  # type: ignore[assignment]
        assert event.dataref is not None
        model = _load_surrogate(ctx.datastore, event.dataref)
        known = {o.name for o in model.outputs}
        missing = sorted(set(config.targets) - known)
        if missing:
            raise ServiceError(
                f"the surrogate {event.dataref.uri} does not predict {missing}"
            )
        state = self.context.load_state("models")
        self.context.save_state("models", {**state, "surrogate": event.dataref.dump()})
        self.surrogate = model
        log.info("surrogate ready: %s", event.dataref.uri)

    # Requests

    def _accept(self, event: Event, ctx: HandlerContext) -> None:
        TuningRequest.load(event.data or {})  # a bad request fails now, not later
        pending = self.context.load_state("pending").get("items", [])
        if not any(item["event"]["id"] == event.id for item in pending):
            pending.append(
                {"event": event.model_dump(mode="json"), "answered_by": None}
            )
            self.context.save_state("pending", {"items": pending})

    def _answer_pending(self, ctx: HandlerContext) -> None:
        """Answer every request not yet answered by a handler that finished."""
        if self.inverse is None or self.surrogate is None:
            if ctx.event is not None and ctx.event.id in self._pending_ids():
                ctx.progress(
                    0, 0, "request kept until the scan and the surrogate are ready"
                )
            return
        config: WarmStartConfig = self.config  # type: ignore[assignment]
        state = self.context.load_state("pending")
        items = state.get("items", [])
        if not state.get("configured"):
            items = [
                {
                    "event": _config_request(ctx, i, r).model_dump(mode="json"),
                    "answered_by": None,
                }
                for i, r in enumerate(config.requests)
            ] + items
        current = ctx.event.id if ctx.event is not None else ""
        todo = [
            item
            for item in items
            if item["answered_by"] is None
            or item["answered_by"] == current
            or not self.context.is_handled(item["answered_by"])
        ]
        for number, item in enumerate(todo):
            request_event = Event.model_validate(item["event"])
            request = TuningRequest.load(request_event.data or {})
            ctx.progress(
                number, len(todo), f"tuning {request.name or request_event.id}"
            )
            answer = self.solve(request, ctx)
            ctx.emit(
                "results", RESULT, answer, subject=request.name, cause=request_event
            )
            item["answered_by"] = current
        if todo or not state.get("configured"):
            self.context.save_state("pending", {"items": items, "configured": True})

    def _pending_ids(self) -> set[str]:
        return {
            item["event"]["id"]
            for item in self.context.load_state("pending").get("items", [])
        }

    # Solving one request

    def solve(
        self, request: TuningRequest, ctx: HandlerContext | None = None
    ) -> dict[str, Any]:
        """Warm start, refine, and (on request) compare with a cold start."""
        config: WarmStartConfig = self.config  # type: ignore[assignment]
        assert self.inverse is not None and self.surrogate is not None
        targets = self._targets(request)
        settings = self.inverse.settings
        method = request.optimizer or config.optimizer
        evaluator_name = request.evaluator or config.evaluator
        budget = request.max_evaluations or config.max_evaluations

        flags = self._flags(targets)
        candidates = self.inverse.propose({t.name: t.value for t in targets})
        warm = self._search(
            targets, settings, candidates, method, evaluator_name, budget
        )
        start_guess = candidates[warm.start_index]
        answer: dict[str, Any] = {
            "name": request.name,
            "targets": {
                t.name: {"value": t.value, "tolerance": t.tolerance, "weight": t.weight}
                for t in targets
            },
            "evaluator": evaluator_name,
            "optimizer": method,
            "flags": flags,
            "current": request.current,
            "warm_start": dict(
                zip([s.name for s in settings], start_guess.tolist(), strict=True)
            ),
            "candidates": len(candidates),
            **_summary(warm, targets, settings),
        }
        if request.cold if request.cold is not None else config.cold_start:
            nominal = np.array([s.default for s in settings])
            cold = self._search(
                targets, settings, nominal, method, evaluator_name, budget
            )
            answer["cold"] = _summary(cold, targets, settings)
        if config.plots and ctx is not None:
            answer["plot"] = _trace_plot(ctx, request, warm, answer.get("cold"))
        return answer

    def _targets(self, request: TuningRequest) -> list[Target]:
        config: WarmStartConfig = self.config  # type: ignore[assignment]
        unknown = sorted(set(request.targets) - set(config.targets))
        if unknown:
            raise ServiceError(
                f"cannot tune for {unknown}; this service tunes for {config.targets}"
            )
        targets = []
        for name, spec in request.targets.items():
            spec = (
                spec if isinstance(spec, TargetSpec) else TargetSpec(value=float(spec))
            )
            low, high = self.scan_ranges.get(name, (0.0, 0.0))
            if spec.tolerance is not None:
                tolerance = spec.tolerance
            elif spec.relative is not None:
                tolerance = spec.relative * abs(spec.value)
            else:
                tolerance = config.default_tolerance * max(high - low, 1e-300)
            targets.append(Target(name, spec.value, tolerance, spec.weight))
        return targets

    def _flags(self, targets: list[Target]) -> list[str]:
        """Targets outside what the surrogate was trained on."""
        flags = []
        for t in targets:
            low, high = self.scan_ranges.get(t.name, (-np.inf, np.inf))
            if not low <= t.value <= high:
                flags.append(
                    f"target {t.name} = {t.value:.6g} lies outside the training range "
                    f"[{low:.6g}, {high:.6g}]; the answer is an extrapolation"
                )
        return flags

    def _search(
        self,
        targets: list[Target],
        settings: list[Setting],
        x0: np.ndarray,
        method: Method,
        evaluator_name: str,
        budget: int,
    ) -> TuneResult:
        config: WarmStartConfig = self.config  # type: ignore[assignment]
        evaluate, gradient = self._evaluator(evaluator_name, targets, settings)
        objective = SafeObjective(
            evaluate,
            targets,
            np.array([s.low for s in settings]),
            np.array([s.high for s in settings]),
            out_of_bounds=config.out_of_bounds,
            max_evaluations=budget,
            gradient=gradient,
        )
        started = time.monotonic()
        result = tune(objective, x0, method, step=config.step)
        log.info(
            "%s from %s: %s evaluations, objective %.3g -> %.3g, %s (%.2f s)",
            method,
            np.round(x0, 3).tolist(),
            result.evaluations,
            result.start_objective,
            result.objective,
            result.message,
            time.monotonic() - started,
        )
        return result

    def _evaluator(
        self, name: str, targets: list[Target], settings: list[Setting]
    ) -> tuple[Any, Any]:
        if name == "simulator":
            return self._simulator_evaluator(targets, settings), None
        return surrogate_evaluator(
            self.surrogate, [t.name for t in targets], [s.name for s in settings]
        )

    def _simulator_evaluator(
        self, targets: list[Target], settings: list[Setting]
    ) -> Any:
        config: WarmStartConfig = self.config  # type: ignore[assignment]
        if config.simulator is None:
            raise ServiceError(
                "evaluator: simulator needs the config field `simulator`"
            )
        if self.simulator is None:
            from wakefield.services.simulation import make_simulator

            self.simulator = make_simulator(config.simulator, config.simulator_options)
        return simulator_evaluator(self.simulator, [t.name for t in targets], settings)


def surrogate_evaluator(
    model: Any, outputs: list[str], settings: list[str]
) -> tuple[Any, Any]:
    """(evaluate, evaluate-with-Jacobian) of a surrogate for the given outputs."""
    order = [s.name for s in model.settings]
    missing = sorted(set(order) - set(settings))
    if missing:
        raise ServiceError(
            f"the surrogate also needs settings {missing}; tune them too"
        )
    index = [order.index(s) for s in settings]
    columns = [[o.name for o in model.outputs].index(name) for name in outputs]

    def forward(x: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(len(order), dtype=torch.float64)
        full = full.index_put((torch.tensor(index),), x)
        return model.torch_forward(full)[columns]

    def evaluate(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return forward(torch.as_tensor(x, dtype=torch.float64)).numpy()

    def with_gradient(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xt = torch.as_tensor(x, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(forward, xt)
        with torch.no_grad():
            y = forward(xt)
        return y.numpy(), jac.numpy()

    return evaluate, with_gradient


def simulator_evaluator(
    simulator: Any, outputs: list[str], settings: list[Setting]
) -> Any:
    """Evaluate settings with the simulator itself, one sample per call."""
    declared = {s.name: s for s in simulator.settings()}
    rng = np.random.default_rng(0)

    def evaluate(x: np.ndarray) -> np.ndarray:
        values = {name: np.array([s.default]) for name, s in declared.items()}
        values.update({s.name: np.array([v]) for s, v in zip(settings, x, strict=True)})
        batch = simulator.simulate(values, rng)
        if batch.failures:
            return np.full(len(outputs), np.nan)
        return np.array([float(batch.outputs[o][0]) for o in outputs])

    return evaluate


def _scan_settings(ds: Any, names: list[str] | None) -> list[Setting]:
    found = []
    # The simulator's order (kept in the scan's provenance), not the store's.
    declared = [s["name"] for s in ds.attrs.get("settings", []) if s.get("name") in ds]
    order = declared + [str(n) for n in ds.data_vars if str(n) not in declared]
    for name in order:
        var = ds[name]
        if var.attrs.get("role") != "setting" or (
            names is not None and name not in names
        ):
            continue
        low, high = var.attrs.get("valid_range", [float(var.min()), float(var.max())])
        if high <= low:
            continue  # held fixed in the scan: nothing to tune
        found.append(
            Setting(
                name=str(name),
                unit=var.attrs.get("units", ""),
                range=(low, high),
                default=float(
                    np.clip(var.attrs.get("default", (low + high) / 2), low, high)
                ),
            )
        )
    if names is not None:
        missing = sorted(set(names) - {s.name for s in found})
        if missing:
            raise ServiceError(f"the scan does not vary settings {missing}")
    if not found:
        raise ServiceError(
            "the scan has no varied settings (variables with role: setting)"
        )
    return found


def _load_surrogate(store: Any, ref: DataRef) -> Any:
    from wakefield.services.surrogate import SurrogateModel

    return SurrogateModel.load(store, ref)


def _config_request(ctx: HandlerContext, index: int, request: TuningRequest) -> Event:
    return Event(
        id=f"{ctx.run_id}.{ctx.service.service}.request.{index}",
        source=ctx.service.source,
        type="org.wakefield.tuning.request",
        data=request.dump(),
        runid=ctx.run_id,
        subject=request.name,
    )


def _summary(
    result: TuneResult, targets: list[Target], settings: list[Setting]
) -> dict[str, Any]:
    distance = {
        t.name: {
            "value": float(y),
            "difference": float(y - t.value),
            "in_tolerances": float((y - t.value) / t.tolerance),
        }
        for t, y in zip(targets, result.outputs, strict=True)
    }
    return {
        "settings": dict(
            zip([s.name for s in settings], result.settings.tolist(), strict=True)
        ),
        "outputs": {
            t.name: float(y) for t, y in zip(targets, result.outputs, strict=True)
        },
        "distance": distance,
        "objective": result.objective,
        "start_objective": result.start_objective,
        "evaluations": result.evaluations,
        "converged": result.converged,
        "clipped": result.clipped,
        "refused": result.refused,
        "message": result.message,
        "trace": [round(step["objective"], 6) for step in result.trace],
    }


def _trace_plot(
    ctx: HandlerContext,
    request: TuningRequest,
    warm: TuneResult,
    cold: dict[str, Any] | None,
) -> str:
    from wakefield.plots import _pyplot, png

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(
        np.minimum.accumulate([s["objective"] for s in warm.trace]), label="warm start"
    )
    if cold is not None:
        ax.semilogy(
            np.minimum.accumulate(cold["trace"]), label="cold start (nominal settings)"
        )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="edge of tolerance")
    ax.set_xlabel("objective evaluations")
    ax.set_ylabel("best objective (tolerance units²)")
    ax.set_title(f"tuning {request.name or ''}".strip(), fontsize=9)
    ax.legend(fontsize=7)
    name = (request.name or "request").replace("/", "_").replace(" ", "_")
    return ctx.datastore.write_file(
        png(fig), ctx.dataset_uri(f"plots/trace-{name}.png")
    )
