"""Run benchmark suites and print their figures.

    python -m bench              every suite
    python -m bench core bus     the named suites
    python -m bench --list       what there is

Each suite compares against the baseline its issue names, in the same run,
as a ratio.  Figures are also saved as JSON under .wakefield/bench/.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback

# Suite name -> (module, what it measures).  A module has run() -> str.
SUITES = {
    "core": ("bench.core", "no-op latency and platform overhead on the embedded bus"),
    "bus": (
        "bench.bus",
        "publish -> consume throughput and latency, embedded and Kafka",
    ),
    "simulation": (
        "bench.simulation",
        "linac scan: service against a plain Cheetah loop; 1 vs 2 workers",
    ),
    "surrogate": (
        "bench.surrogate",
        "surrogate inference against Cheetah; training; error table",
    ),
    "warm_start": (
        "bench.warm_start",
        "warm against cold start for 100 reachable targets",
    ),
    "trip_classifier": (
        "bench.trip_classifier",
        "live classification rate, latency, macro-F1",
    ),
    "fel_gan": (
        "bench.fel_gan",
        "generated against simulated pulses per second; fidelity",
    ),
    "scaling": ("bench.scaling", "1 against 2 replicas on a two-node Ray cluster"),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suites", nargs="*", help="suites to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the suites")
    args = parser.parse_args()
    if args.list:
        for name, (_, text) in SUITES.items():
            print(f"{name:16} {text}")
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suites {unknown}; known: {', '.join(SUITES)}")
    failed = []
    for name in args.suites or list(SUITES):
        module_name, text = SUITES[name]
        print(f"== {name}: {text}", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                print("  not available in this checkout\n", flush=True)
                continue
            raise
        try:
            print(module.run(), flush=True)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"  ({time.monotonic() - started:.0f} s)\n", flush=True)
    if failed:
        print(f"suites that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
