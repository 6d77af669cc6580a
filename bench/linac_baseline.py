"""The baseline for the linac scan: a plain Cheetah loop, one sample at a time.

:func:`plain_cheetah_loop` tracks the same lattice and the same injector
beam as the ``linac`` simulator, but the way a user of Cheetah alone would:
one Cheetah ``Segment`` for the whole machine, the six settings written
into its cavities before each sample, Cheetah's own element-by-element
tracking (second order in the chicanes) and Cheetah's beam properties for
the outputs, with NumPy histograms for the current profile and the phase
space image.  No batching, no Ray, no bus, no datastore.

:func:`compare` times the simulator's batched ``simulate`` on the same
rows, so that the platform's gain or overhead shows as a ratio::

    python -m bench.linac_baseline --samples 256 --loop-samples 32
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from wakefield.services.simulators.linac import (
    LCLS,
    LINACS,
    LinacModel,
    LinacOptions,
    LinacSimulator,
)


def plain_cheetah_loop(
    rows: Sequence[Mapping[str, float]],
    *,
    n_particles: int = 10_000,
    beam_seed: int = 0,
    dtype: str = "float64",
) -> float:
    """Seconds to track ``rows`` (the six settings each) one at a time.

    The lattice and the injector beam are built before the clock starts, as
    a Cheetah user would build them once; the clock covers setting the
    cavities, tracking and reading the outputs of every row.
    """
    options = LinacOptions(n_particles=n_particles, beam_seed=beam_seed, dtype=dtype)
    model = LinacModel(options)
    nominal_phase = {
        k: torch.tensor(-getattr(LCLS, f"{k}_phase"), dtype=model.dtype) for k in LINACS
    }
    nominal_voltage = {
        k: torch.tensor(v, dtype=model.dtype) for k, v in model.nominal_voltage.items()
    }
    sections = model.sections(nominal_phase, nominal_voltage)
    cavities = _scanned_cavities(sections)
    beam = model.injector_beam()
    z_edges = np.linspace(-options.lps_z_half_width, options.lps_z_half_width, 65)
    delta_edges = np.linspace(
        -options.lps_delta_half_width, options.lps_delta_half_width, 65
    )

    started = time.perf_counter()
    for row in rows:
        for linac in LINACS:
            volts = model.nominal_voltage[linac] * row[f"{linac}_voltage"] / 100
            for cavity in cavities[linac]:
                cavity.voltage = torch.tensor(
                    volts / len(cavities[linac]), dtype=model.dtype
                )
                cavity.phase = torch.tensor(-row[f"{linac}_phase"], dtype=model.dtype)

        tracked = beam
        outputs: dict[str, Any] = {}
        for name, segment in sections:
            tracked = segment.track(tracked)
            if name in ("bc1", "bc2", "l3"):
                outputs[name] = _read(tracked, z_edges, delta_edges, name == "l3")
    return time.perf_counter() - started


def _scanned_cavities(sections: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    cavities: dict[str, list[Any]] = {k: [] for k in LINACS}
    for _, segment in sections:
        for element in segment.elements:
            linac = element.name.split("_")[0]
            if type(element).__name__ == "Cavity" and linac in cavities:
                if element.name != "l1x":
                    cavities[linac].append(element)
    return cavities


def _read(
    beam: Any, z_edges: np.ndarray, delta_edges: np.ndarray, final: bool
) -> dict[str, Any]:
    """The outputs a Cheetah user reads off a beam, with NumPy histograms."""
    values: dict[str, Any] = {
        "energy": float(beam.energy),
        "energy_spread": float(beam.sigma_p),
        "bunch_length": float(beam.sigma_tau),
    }
    tau = beam.tau.detach().numpy()
    counts, edges = np.histogram(tau, bins=128)
    values["peak_current"] = (
        counts.max() * float(beam.total_charge) / (edges[1] - edges[0])
    )
    if final:
        for key in ("normalized_emittance", "beta", "alpha", "sigma", "mu"):
            for plane in ("x", "y"):
                values[f"{key}_{plane}"] = float(getattr(beam, f"{key}_{plane}"))
        delta = beam.p.detach().numpy()
        values["lps"] = np.histogram2d(
            delta - delta.mean(), tau - tau.mean(), bins=(delta_edges, z_edges)
        )[0]
    return values


def random_rows(n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` settings rows drawn uniformly inside the simulator's ranges."""
    rng = np.random.default_rng(seed)
    settings = LinacSimulator().settings()
    return [
        {s.name: float(rng.uniform(s.low, s.high)) for s in settings} for _ in range(n)
    ]


def batched_simulator(
    rows: Sequence[Mapping[str, float]],
    *,
    n_particles: int = 10_000,
    beam_seed: int = 0,
    max_batch: int = 256,
) -> float:
    """Seconds for the ``linac`` simulator to simulate ``rows`` in batches
    (its model built before the clock starts)."""
    sim = LinacSimulator(
        LinacOptions(n_particles=n_particles, beam_seed=beam_seed, max_batch=max_batch)
    )
    _ = sim.model
    settings = {s.name: np.array([row[s.name] for row in rows]) for s in sim.settings()}
    started = time.perf_counter()
    sim.simulate(settings, np.random.default_rng(0))
    return time.perf_counter() - started


def compare(
    samples: int = 256, loop_samples: int = 32, n_particles: int = 10_000
) -> dict[str, float]:
    """Samples per second, batched simulator against the plain loop.

    The loop runs over the first ``loop_samples`` rows only (its time per
    sample does not depend on how many rows there are).
    """
    rows = random_rows(samples)
    batched = batched_simulator(rows, n_particles=n_particles)
    looped = plain_cheetah_loop(rows[:loop_samples], n_particles=n_particles)
    result = {
        "samples": float(samples),
        "particles": float(n_particles),
        "batched_samples_per_s": samples / batched,
        "loop_samples_per_s": loop_samples / looped,
    }
    result["speedup"] = result["batched_samples_per_s"] / result["loop_samples_per_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--loop-samples", type=int, default=32)
    parser.add_argument("--particles", type=int, default=10_000)
    args = parser.parse_args()
    result = compare(args.samples, args.loop_samples, args.particles)
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4g}")
    print(f"{'torch_threads':<{width}}  {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
