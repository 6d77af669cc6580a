"""Train the FEL pulse GAN on simulated SASE shots and measure its fidelity.

Simulates a training set at a grid of 27 beam conditions, trains the
conditional WGAN-GP on it, and compares generated with held-out simulated
shots at every training condition and at two conditions between them.
Prints simulated and generated shots per second, the training time and the
fidelity table: mean energy, number of modes, spike count (simulated,
generated, relative difference), each beside its floor, the same check
between two independent simulated sets of as many shots.  Writes the
generator, a JSON report and plots to ``--out``.

    python -m bench fel_gan
    .venv/bin/python -m bench.fel_gan --train-shots 2000 --out /tmp/fel-gan
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from bench.report import RESULTS
from wakefield.services.fel_gan import FelGan, fidelity, plots, training
from wakefield.services.simulators.sase import SaseOptions, SasePulseSimulator

CONDITIONS = ("peak_current", "bunch_length", "energy_spread")
UNITS = ("A", "s", "")
# Three values of each condition, so that curvature can be learned.
GRID = {
    "peak_current": (2000.0, 3000.0, 4000.0),
    "bunch_length": (1.0e-15, 1.5e-15, 2.0e-15),
    "energy_spread": (0.5e-4, 1.25e-4, 2.0e-4),
}
UNDULATOR_LENGTH = 30.0
OPTIONS = SaseOptions(time_window=12e-15, n_time=256)


TRAINING = [
    dict(zip(CONDITIONS, row, strict=True)) for row in itertools.product(*GRID.values())
]
# Conditions between the grid points, never trained on.
UNSEEN = [
    {"peak_current": 2500.0, "bunch_length": 1.25e-15, "energy_spread": 0.9e-4},
    {"peak_current": 3500.0, "bunch_length": 1.75e-15, "energy_spread": 1.6e-4},
]


def simulate(
    sim: SasePulseSimulator, conditions: list[dict[str, float]], n: int, seed: int
) -> tuple[dict, dict]:
    """``n`` shots at every condition: settings and outputs."""
    settings = {
        name: np.repeat([c[name] for c in conditions], n) for name in CONDITIONS
    }
    settings["undulator_length"] = np.full(len(conditions) * n, UNDULATOR_LENGTH)
    batch = sim.simulate(settings, np.random.default_rng(seed))
    return settings, batch.outputs


def evaluate(
    gan: FelGan,
    sim: SasePulseSimulator,
    conditions: list[dict[str, float]],
    n: int,
    seed: int,
    out: Path,
    prefix: str,
) -> tuple[list[fidelity.ConditionReport], list[fidelity.ConditionReport], float]:
    """Compare generated with held-out simulated shots at each condition.

    Returns the reports, the same comparison between two independent sets of
    simulated shots (what a perfect generator would score: the statistical
    floor of the check at ``n`` shots), and the seconds spent generating.
    One condition at a time, so memory stays at a few sets of ``n`` shots.
    """
    reports, floors = [], []
    gen_seconds = 0.0
    for i, condition in enumerate(conditions, start=1):
        simulated, again = (
            _pulses(sim, *simulate(sim, [condition], n, seed + 2 * i + k))
            for k in (0, 1)
        )
        t0 = time.perf_counter()
        generated = gan.sample_pulses(condition, n, seed=7 + i)
        gen_seconds += time.perf_counter() - t0
        ratio = fidelity.fixed_noise_diversity(gan, condition, simulated)
        reports.append(
            fidelity.compare(condition, simulated, generated, diversity_ratio=ratio)
        )
        floors.append(fidelity.compare(condition, simulated, again))
        title = _label(condition)
        plots.plot_pulses(
            simulated, generated, out / f"{prefix}-pulses-{i}.png", title=title
        )
        plots.plot_distributions(
            simulated, generated, out / f"{prefix}-distributions-{i}.png", title=title
        )
    return reports, floors, gen_seconds


def _pulses(sim: SasePulseSimulator, _: dict, outputs: dict) -> fidelity.Pulses:
    return fidelity.Pulses(
        outputs["power"], sim.dt, outputs["spectrum"], sim.photon_energy
    )


def main(argv: list[str] | None = None) -> str:
    """Train, judge and print; returns the verdict line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-shots", type=int, default=4000, help="per condition")
    parser.add_argument(
        "--heldout-shots", type=int, default=30000, help="per condition"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--critic-steps", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--final-learning-rate", type=float, default=5e-5)
    parser.add_argument(
        "--saturation",
        action="store_true",
        help="let the generator learn a pointwise saturation gain",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "fel-gan")
    parser.add_argument(
        "--generator", type=Path, help="evaluate this saved generator, no training"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sim = SasePulseSimulator(OPTIONS)

    start = time.perf_counter()
    settings, outputs = simulate(sim, TRAINING, args.train_shots, seed=args.seed)
    elapsed = time.perf_counter() - start
    n_train = len(outputs["pulse_energy"])
    print(
        f"simulated {n_train} training shots in {elapsed:.2f} s: "
        f"{n_train / elapsed:.0f} shots/s ({OPTIONS.n_time} time samples)"
    )
    data = training.PulseDataset.from_outputs(
        outputs,
        settings,
        names=CONDITIONS,
        units=UNITS,
        dt=sim.dt,
        photon_energy=float(sim.photon_energy[OPTIONS.n_time // 2]),
    )

    config = training.TrainingConfig(
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        batch_size=args.batch_size,
        critic_steps=args.critic_steps,
        learning_rate=args.learning_rate,
        final_learning_rate=args.final_learning_rate,
        saturation=args.saturation,
    )
    history: list[dict[str, float]] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        history.append({"epoch": epoch, **metrics})
        if epoch % 5 == 0 or epoch == 1:
            print(
                f"epoch {epoch}: W {metrics['wasserstein']:.3f} "
                f"GP {metrics['gradient_penalty']:.3f} "
                f"G {metrics['generator_loss']:.3f} ({metrics['seconds']:.2f} s)",
                flush=True,
            )

    start, cpu_start = time.perf_counter(), time.process_time()
    if args.generator:
        gan = training.load(args.generator)
    else:
        gan = training.train(data, config, on_epoch)
        training.save(gan, args.out / "generator")
    train_seconds = time.perf_counter() - start
    train_cpu = time.process_time() - cpu_start
    print(
        f"trained {args.epochs} epochs in {train_seconds:.0f} s wall, "
        f"{train_cpu:.0f} s CPU ({args.threads} thread(s))"
    )

    # Held-out shots from another seed, compared condition by condition.
    reports, floors, gen_seconds = evaluate(
        gan, sim, TRAINING, args.heldout_shots, args.seed + 1000, args.out, "trained"
    )
    unseen, unseen_floors, _ = evaluate(
        gan, sim, UNSEEN, args.heldout_shots, args.seed + 2000, args.out, "unseen"
    )
    n_gen = args.heldout_shots * len(reports)
    print(
        f"generated {n_gen} shots in {gen_seconds:.2f} s: "
        f"{n_gen / gen_seconds:.0f} shots/s"
    )

    verdict = fidelity.verdict(reports)
    print(
        "held-out shots at the training conditions ('floor': the same check "
        "between two independent simulated sets of as many shots):"
    )
    print_table(reports, floors)
    print("verdict:", "accepted" if verdict.accepted else "kept back")
    for reason in verdict.reasons:
        print("  ", reason)
    print("held-out shots at unseen conditions:")
    print_table(unseen, unseen_floors)
    worst = {
        name: (
            max(r.relative(name) for r in reports),
            max(f.relative(name) for f in floors),
        )
        for name in ("mean_energy", "modes", "spike_count")
    }
    for name, (gen, floor) in worst.items():
        print(f"worst {name} difference: {gen:.1%} (floor {floor:.1%})")
    plots.plot_learning_curve(history, args.out / "learning-curve.png")
    report_file = args.out / "report.json"
    report_file.write_text(
        json.dumps(
            {
                "train_seconds": train_seconds,
                "train_cpu_seconds": train_cpu,
                "epochs": args.epochs,
                "train_shots": n_train,
                "heldout_shots": args.heldout_shots,
                "rows": [r.row() for r in reports],
                "floor_rows": [r.row() for r in floors],
                "unseen_rows": [r.row() for r in unseen],
                "unseen_floor_rows": [r.row() for r in unseen_floors],
                "verdict": {"accepted": verdict.accepted, "reasons": verdict.reasons},
                "history": history,
            },
            indent=1,
            default=float,
        )
    )
    print(f"wrote {report_file} and the plots beside it")
    return "fel-gan verdict: " + ("accepted" if verdict.accepted else "kept back")


def run() -> str:
    """The suite for ``python -m bench``: the defaults above."""
    return main([])


def _label(condition: dict[str, float]) -> str:
    return (
        f"I = {condition['peak_current'] / 1e3:.1f} kA, "
        f"sigma_t = {condition['bunch_length'] * 1e15:.1f} fs, "
        f"sigma_E/E = {condition['energy_spread']:.1e}"
    )


def print_table(
    reports: list[fidelity.ConditionReport], floors: list[fidelity.ConditionReport]
) -> None:
    head = (
        f"{'I (kA)':>6} {'s_t(fs)':>7} {'s_E':>7} | {'W sim (uJ)':>10} "
        f"{'W gen':>8} {'rel':>6} {'floor':>6} | {'M sim':>6} {'M gen':>6} "
        f"{'rel':>6} {'floor':>6} | {'N sim':>6} {'N gen':>6} {'rel':>6} "
        f"{'floor':>6} | {'div':>5} {'KS':>5}"
    )
    print(head)
    print("-" * len(head))
    for r, f in zip(reports, floors, strict=True):
        c, s, g = r.condition, r.simulated, r.generated
        print(
            f"{c['peak_current'] / 1e3:6.1f} {c['bunch_length'] * 1e15:7.1f} "
            f"{c['energy_spread']:7.1e} | {s.mean_energy * 1e6:10.4f} "
            f"{g.mean_energy * 1e6:8.4f} {r.relative('mean_energy'):6.1%} "
            f"{f.relative('mean_energy'):6.1%} | "
            f"{s.modes:6.2f} {g.modes:6.2f} {r.relative('modes'):6.1%} "
            f"{f.relative('modes'):6.1%} | "
            f"{s.spike_count:6.2f} {g.spike_count:6.2f} "
            f"{r.relative('spike_count'):6.1%} {f.relative('spike_count'):6.1%} | "
            f"{r.diversity or 0:5.2f} {r.energy_ks:5.3f}"
        )


if __name__ == "__main__":
    print(main())
