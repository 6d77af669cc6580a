"""``simulation``: scans of settings through a simulator, into one Zarr dataset.

On a request it samples the settings with a seeded design, lays out the
dataset, and fans the samples out as Ray tasks of ``chunk`` samples each.
Every task simulates its samples and writes them straight into its own
whole chunks of the store; the service reports progress as tasks finish,
then publishes the dataset and emits its reference.

Each sample carries a status: ``ok``, ``failed`` (the simulator said why) or
``non_finite`` (an output came back NaN or infinite).  Those never sit as
silent NaNs among good rows; ``status_reason`` indexes the reason text kept
in the dataset's ``status_reasons`` attribute.
"""

from __future__ import annotations

import logging
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import xarray as xr
from pydantic import Field, StrictBool, ValidationError, model_validator

from wakefield.config import StrictModel
from wakefield.datastore import DatasetLayout, Datastore, VariableLayout
from wakefield.design import Design, sample
from wakefield.errors import RegistryError, ServiceError, SimulationError
from wakefield.events import Event
from wakefield.registry import load_simulator
from wakefield.service import DATASET_READY, HandlerContext, Service
from wakefield.simulator import Simulator
from wakefield.variables import Output, Setting

log = logging.getLogger(__name__)

STATUS_OK, STATUS_FAILED, STATUS_NON_FINITE = 0, 1, 2
STATUS_ATTRS = {
    "long_name": "sample status",
    "flag_values": [STATUS_OK, STATUS_FAILED, STATUS_NON_FINITE],
    "flag_meanings": "ok failed non_finite",
}


class SettingOverride(StrictModel):
    """Narrow a setting's range for this scan, or hold it at one value."""

    range: tuple[float, float] | None = None
    value: float | None = None

    @model_validator(mode="after")
    def _one(self) -> SettingOverride:
        if (self.range is None) == (self.value is None):
            raise ValueError("give either range: [low, high] or value: x")
        return self


class SimulationConfig(StrictModel):
    simulator: str
    """A registered simulator (`wakefield services simulation` lists them) or ``module:Class``."""
    options: dict[str, Any] = {}
    """The simulator's own options, checked by its model."""
    settings: dict[str, SettingOverride] = {}
    """Per setting: a narrower ``range`` or a fixed ``value``; others keep the simulator's range."""
    design: Design = Design()
    chunk: int = Field(default=256, ge=1)
    """Samples per Ray task, and per Zarr chunk along ``sample``."""
    workers: int | None = Field(default=None, ge=1)
    """Tasks running at once (default: as many as Ray has CPUs)."""
    task_cpus: float = Field(default=1.0, gt=0)
    name: str = Field(default="scan.zarr", pattern=r"^[A-Za-z0-9._-]+$")
    plots: StrictBool = True
    """Write PNG plots beside the dataset."""

    @model_validator(mode="after")
    def _check_simulator(self) -> SimulationConfig:
        # Checked when the workflow loads, not an hour into a run.
        try:
            cls = load_simulator(self.simulator)
        except RegistryError as exc:
            raise ValueError(str(exc)) from exc
        if not (isinstance(cls, type) and issubclass(cls, Simulator)):
            raise ValueError(f"{self.simulator!r} is not a wakefield Simulator class")
        try:
            cls.Options.load(self.options)
        except ValidationError as exc:
            problems = "; ".join(
                f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"simulator {self.simulator!r}: {problems}") from None
        return self


class ScanRequest(StrictModel):
    """What a request event's data may change for one scan."""

    samples: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0)
    method: str | None = None


class Simulation(Service):
    """Scans settings through a simulator into one Zarr dataset."""

    kind = "simulation"
    Config = SimulationConfig
    summary = "Scan settings through a simulator (seeded design, Ray tasks) into one Zarr dataset."
    inputs = {"requests": "a scan request; data may set samples, seed, method"}
    outputs = {"datasets": "org.wakefield.dataset.ready with the scan's reference"}

    @classmethod
    def render(cls, event: Event) -> str | None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type != DATASET_READY or "samples" not in data:
            return None
        lines = [
            f"scan of {data['samples']} samples ({data['method']}, seed {data['seed']}) "
            f"in {data.get('seconds', float('nan')):.1f} s; {data['failed']} flagged"
        ]
        if event.dataref is not None:
            lines.append(f"  dataset: {event.dataref.uri}")
        lines += [f"  plot: {p}" for p in data.get("plots", [])]
        return "\n".join(lines)

    def setup(self) -> None:
        config: SimulationConfig = self.config  # type: ignore[assignment]
        self.simulator = make_simulator(config.simulator, config.options)
        self.settings = resolve_settings(self.simulator.settings(), config.settings)

    def handle(self, event: Event, port: str, ctx: HandlerContext) -> None:
        config: SimulationConfig = self.config  # type: ignore[assignment]
        request = ScanRequest.load(event.data or {})
        design = config.design.model_copy(
            update={k: v for k, v in request.model_dump().items() if v is not None}
        )
        design = Design.load(design.model_dump())

        started = time.monotonic()
        ref, summary = run_scan(
            self.simulator,
            self.settings,
            design,
            config,
            ctx.datastore,
            ctx.dataset_uri(config.name),
            ctx.progress,
            extra_attrs={"run_id": ctx.run_id, "request": event.id},
        )
        summary["seconds"] = round(time.monotonic() - started, 3)
        if config.plots:
            summary["plots"] = write_plots(ctx.datastore, ref.uri, self.simulator)
        ctx.emit("datasets", DATASET_READY, summary, dataref=ref)


def make_simulator(name: str, options: dict[str, Any]) -> Simulator:
    """A simulator by registered name (or ``module:Class``) with validated options."""
    cls = load_simulator(name)
    if not (isinstance(cls, type) and issubclass(cls, Simulator)):
        raise ServiceError(f"{name!r} is not a wakefield Simulator class")
    return cls(cls.Options.load(options))


def resolve_settings(
    declared: list[Setting], overrides: dict[str, SettingOverride]
) -> list[Setting]:
    """The simulator's settings with the workflow's narrower ranges or fixed values."""
    by_name = {s.name: s for s in declared}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise ServiceError(
            f"the simulator has no settings {unknown}; its settings: {sorted(by_name)}"
        )
    resolved = []
    for setting in declared:
        override = overrides.get(setting.name)
        if override is None:
            resolved.append(setting)
            continue
        low, high = (
            override.range if override.range else (override.value, override.value)
        )
        if low < setting.low or high > setting.high:  # type: ignore[operator]
            raise ServiceError(
                f"setting {setting.name}: [{low}, {high}] lies outside the simulator's limits "
                f"[{setting.low}, {setting.high}] {setting.unit}"
            )
        if override.value is not None:
            resolved.append(
                setting.model_copy(
                    update={
                        "default": override.value,
                        "range": (override.value, override.value),
                    }
                )
            )
        else:
            default = min(max(setting.default, low), high)  # type: ignore[type-var]
            resolved.append(
                Setting.load(
                    {**setting.dump(), "range": [low, high], "default": default}
                )
            )
    return resolved


def run_scan(
    simulator: Simulator,
    settings: list[Setting],
    design: Design,
    config: SimulationConfig,
    store: Datastore,
    uri: str,
    progress: Any = None,
    extra_attrs: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Sample, fan out over Ray tasks, write, publish; returns (reference, summary)."""
    import ray

    varying = [s for s in settings if s.low < s.high]
    values = sample(design, varying)
    n = len(next(iter(values.values()))) if values else design.samples * design.repeats
    for s in settings:
        if s.low == s.high:
            values[s.name] = np.full(n, s.low)

    outputs = simulator.outputs()
    layout = _layout(
        store,
        uri,
        simulator,
        settings,
        outputs,
        n,
        config.chunk,
        _provenance(simulator, design, settings, extra_attrs),
    )
    remote = ray.remote(num_cpus=config.task_cpus)(_simulate_chunk)
    limit = config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    payload = {
        "simulator": type(simulator).__module__ + ":" + type(simulator).__name__,
        "options": simulator.options.dump(),
    }
    seeds = np.random.SeedSequence(design.seed).spawn(
        (n + config.chunk - 1) // config.chunk
    )

    pending: list[Any] = []
    reasons: dict[int, str] = {}
    done = 0
    try:
        for index, start in enumerate(range(0, n, config.chunk)):
            stop = min(start + config.chunk, n)
            chunk = {k: v[start:stop] for k, v in values.items()}
            pending.append(
                remote.remote(
                    payload,
                    chunk,
                    seeds[index],
                    store.url,
                    layout.staging,
                    uri,
                    layout.dims,
                    layout.chunks,
                    start,
                )
            )
            while len(pending) >= limit:
                done, pending = _collect(pending, reasons, done, n, progress)
        while pending:
            done, pending = _collect(pending, reasons, done, n, progress)
    except Exception:
        layout.discard()
        raise
    _write_reasons(layout, reasons, n)
    ref = layout.publish()
    failed = len(reasons)
    log.info("scan %s: %s samples, %s flagged", uri, n, failed)
    return ref, {
        "samples": n,
        "failed": failed,
        "method": design.method,
        "seed": design.seed,
        "settings": [s.name for s in settings],
    }


def _collect(
    pending: list[Any], reasons: dict[int, str], done: int, total: int, progress: Any
) -> tuple[int, list[Any]]:
    import ray

    ready, pending = ray.wait(pending, num_returns=1)
    for ref in ready:
        try:
            count, failures = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise SimulationError(f"a simulation task failed: {exc}") from exc
        reasons.update(failures)
        done += count
    if progress is not None:
        progress(done, total, f"{done}/{total} samples")
    return done, pending


def _simulate_chunk(
    payload: dict[str, Any],
    chunk: dict[str, np.ndarray],
    seed: np.random.SeedSequence,
    root: str,
    staging: str,
    uri: str,
    dims: dict[str, int],
    chunks: dict[str, int],
    start: int,
) -> tuple[int, dict[int, str]]:
    """One Ray task: simulate samples [start, start + len) and write their chunks."""
    simulator = make_simulator(payload["simulator"], payload["options"])
    n = len(next(iter(chunk.values())))
    rng = np.random.default_rng(seed)
    try:
        batch = simulator.simulate(chunk, rng)
        failures = {int(i): str(r) for i, r in batch.failures.items()}
        outputs = batch.outputs
    except (
        Exception
    ) as exc:  # the whole batch failed: flag every sample with the reason
        log.exception("simulation of samples %s..%s failed", start, start + n)
        failures = {
            i: f"simulator error: {type(exc).__name__}: {exc}" for i in range(n)
        }
        outputs = {}

    status = np.zeros(n, dtype=np.int8)
    data: dict[str, Any] = {}
    for out in simulator.outputs():
        shape = (n, *out.shape)
        array = np.asarray(
            outputs.get(out.name, np.full(shape, _missing(out))), dtype=out.dtype
        )
        if array.shape != shape:
            raise SimulationError(
                f"output {out.name} has shape {array.shape}, declared {shape}"
            )
        if array.dtype.kind == "f":
            bad = ~np.isfinite(array.reshape(n, -1)).all(axis=1)
            for i in np.flatnonzero(bad):
                if int(i) not in failures:
                    failures[int(i)] = f"non-finite {out.name}"
                    status[i] = STATUS_NON_FINITE
        data[out.name] = (("sample", *out.dims), array)
    for i in failures:
        if status[i] == STATUS_OK:
            status[i] = STATUS_FAILED
    for name, values in chunk.items():
        data[name] = ("sample", np.asarray(values, dtype=np.float64))
    data["status"] = ("sample", status)

    layout = DatasetLayout(Datastore(root), uri, staging, dims, chunks)
    layout.write_region(xr.Dataset(data), "sample", start)
    return n, {start + i: reason for i, reason in failures.items()}


def _missing(out: Output) -> Any:
    return np.nan if np.dtype(out.dtype).kind == "f" else -1


def _layout(
    store: Datastore,
    uri: str,
    simulator: Simulator,
    settings: list[Setting],
    outputs: list[Output],
    n: int,
    chunk: int,
    attrs: dict[str, Any],
) -> DatasetLayout:
    coords = simulator.coordinates()
    dims: dict[str, int] = {"sample": n}
    variables: dict[str, VariableLayout] = {}
    for s in settings:
        variables[s.name] = VariableLayout(
            ("sample",),
            "float64",
            attrs={
                "units": s.unit,
                "long_name": s.description or s.name,
                "role": "setting",
                "valid_range": list(s.range),
                "default": s.default,
            },
        )
    for out in outputs:
        dims.update(zip(out.dims, out.shape, strict=True))
        var_attrs: dict[str, Any] = {
            "units": out.unit,
            "long_name": out.description or out.name,
            "role": "output",
        }
        if out.categories:
            var_attrs.update(
                flag_values=list(range(len(out.categories))),
                categories=list(out.categories),
            )
        variables[out.name] = VariableLayout(
            ("sample", *out.dims), out.dtype, attrs=var_attrs
        )
    variables["status"] = VariableLayout(
        ("sample",), "int8", fill_value=STATUS_FAILED, attrs=STATUS_ATTRS
    )
    variables["status_reason"] = VariableLayout(
        ("sample",),
        "int32",
        fill_value=0,
        attrs={
            "long_name": "index into the dataset attribute status_reasons (0: none)"
        },
    )
    coord_arrays = {
        name: xr.DataArray(
            c.values,
            dims=name,
            attrs={"units": c.unit, "long_name": c.description or name},
        )
        for name, c in coords.items()
        if name in dims
    }
    return store.layout(
        uri,
        dims=dims,
        variables=variables,
        coords=coord_arrays,
        chunks={"sample": chunk},
        attrs=attrs,
    )


def _write_reasons(layout: DatasetLayout, reasons: dict[int, str], n: int) -> None:
    texts = [""] + sorted(set(reasons.values()))
    code = {text: i for i, text in enumerate(texts)}
    column = np.zeros(n, dtype=np.int32)
    for index, text in reasons.items():
        column[index] = code[text]
    import zarr

    group = zarr.open_group(
        layout.store._store(layout.staging), mode="r+", zarr_format=3
    )
    group["status_reason"][...] = column
    layout.update_attrs({"status_reasons": texts})


def failure_reasons(ds: xr.Dataset) -> dict[int, str]:
    """Sample index -> why it is flagged, for every flagged sample of a scan."""
    texts = ds.attrs.get("status_reasons", [""])
    codes = ds["status_reason"].values
    return {
        int(i): texts[codes[i]] or "flagged"
        for i in np.flatnonzero(ds["status"].values != STATUS_OK)
    }


def _provenance(
    simulator: Simulator,
    design: Design,
    settings: list[Setting],
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    packages = {}
    for name in (
        "wakefield",
        "numpy",
        "scipy",
        "xarray",
        "zarr",
        "torch",
        "cheetah-accelerator",
        "ray",
    ):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "title": f"{simulator.name} scan",
        "wakefield_version": packages.get("wakefield", "unknown"),
        "simulator": simulator.name,
        "simulator_options": simulator.options.dump(),
        "simulator_provenance": simulator.provenance(),
        "design": design.dump(),
        "settings": [s.dump() for s in settings],
        "packages": packages,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def write_plots(store: Datastore, uri: str, simulator: Simulator) -> list[str]:
    """Settings against key outputs, and a few of any image output, as PNG beside the data."""
    from wakefield.plots import scan_images, scan_scatter

    ds = store.open_dataset(uri)
    written = []
    folder = uri.rsplit("/", 1)[0] + "/plots"
    for name, figure in (
        ("settings_vs_outputs.png", scan_scatter(ds)),
        ("images.png", scan_images(ds)),
    ):
        if figure is None:
            continue
        path = store.write_file(figure, f"{folder}/{name}")
        written.append(path)
    return written
