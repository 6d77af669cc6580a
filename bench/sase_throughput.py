"""Shots per second of the SASE pulse simulator, and its statistics check.

Simulates batches at the default settings on the default grid (1024 time
samples) and on the fel-gan grid (256), and prints shots/s with the fitted
number of modes against the expected one.

    .venv/bin/python bench/sase_throughput.py --shots 4000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from wakefield.services.fel_gan import fidelity
from wakefield.services.simulators.sase import SaseOptions, SasePulseSimulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    for options in (SaseOptions(), SaseOptions(time_window=12e-15, n_time=256)):
        sim = SasePulseSimulator(options)
        settings = {s.name: np.full(args.shots, s.default) for s in sim.settings()}
        if options.n_time == 256:
            settings["bunch_length"][:] = 1.5e-15
        best = np.inf
        for repeat in range(args.repeats):
            start = time.perf_counter()
            out = sim.simulate(settings, np.random.default_rng(repeat)).outputs
            best = min(best, time.perf_counter() - start)
        fitted = fidelity.modes(out["pulse_energy"])
        print(
            f"n_time {options.n_time}: {args.shots / best:,.0f} shots/s "
            f"(best of {args.repeats}); M fitted {fitted:.2f}, "
            f"expected {out['mode_count'][0]:.2f}"
        )


if __name__ == "__main__":
    main()
