"""Training the conditional WGAN-GP on simulated SASE pulses, and keeping it.

The loop is the WGAN-GP recipe (Gulrajani et al., NeurIPS 2017): several
critic steps per generator step, the critic's gradient norm pushed to 1 on
points between simulated and generated fields.  Everything random comes
from the config's seed.

A trained generator is kept as two files in a folder, neither of which
executes code when loaded: ``config.json`` (:class:`GanConfig`: conditions
and their ranges, the grid, the scale fit, provenance) and
``generator.pt`` (a ``state_dict`` read with ``weights_only=True``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field, StrictBool, ValidationError
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from wakefield.config import StrictModel
from wakefield.errors import DatastoreError, SpecError

from .model import (
    ConditionSpec,
    Critic,
    FelGan,
    GanConfig,
    Generator,
    fit_scale,
    log_scale,
    monomials,
    scale_conditions,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "generator.pt"

EpochCallback = Callable[[int, dict[str, float]], None]


class TrainingConfig(StrictModel):
    """How to train the generator; ``seed`` makes a run repeatable."""

    epochs: int = Field(default=100, ge=0)
    """Passes over the data; 0 returns the untrained generator with its scale fit."""
    batch_size: int = Field(default=64, ge=2)
    critic_steps: int = Field(default=5, ge=1)
    """Critic updates per generator update."""
    learning_rate: float = Field(default=5e-4, gt=0)
    """Adam's initial step size for both networks."""
    final_learning_rate: float = Field(default=5e-5, gt=0)
    """The step size reached, linearly, at the last epoch."""
    betas: tuple[float, float] = (0.5, 0.9)
    """Adam's beta1 and beta2 for both networks."""
    gradient_penalty: float = Field(default=10.0, ge=0)
    """Weight of the gradient penalty, lambda."""
    generator_width: int = Field(default=128, ge=4)
    saturation: StrictBool = False
    """Let the generator learn saturation (a pointwise gain on the power);
    leave it off for pulses far from saturation, where it costs fidelity."""
    critic_width: int = Field(default=16, ge=4)
    average: float = Field(default=0.998, ge=0, lt=1)
    """Decay of the exponential moving average of the generator's weights,
    per generator step, that becomes the trained generator (0: the last
    weights).  A GAN's iterates circle the equilibrium, and averaging damps
    that; on the bench it changed no fidelity figure by more than its scatter."""
    calibration_shots: int = Field(default=500, ge=0)
    """Generated shots per training condition for :func:`calibrate_energy`;
    0 leaves the energy scale uncalibrated."""
    seed: int = 0
    threads: int | None = Field(default=None, ge=1)
    """torch CPU threads; the default leaves torch's own choice."""


@dataclass(frozen=True)
class PulseDataset:
    """Simulated shots for training: conditions and complex fields.

    ``conditions`` is samples x conditions (named ``names``, in ``units``),
    ``field`` samples x time, sqrt(W), on a grid of step ``dt`` (s);
    ``photon_energy`` (eV) is the centre of the spectrum.
    """

    conditions: npt.NDArray[np.float64]
    field: npt.NDArray[np.complexfloating[Any, Any]]
    dt: float
    photon_energy: float
    names: tuple[str, ...]
    units: tuple[str, ...]

    def __post_init__(self) -> None:
        n, k = self.conditions.shape
        if self.field.shape[0] != n or not k == len(self.names) == len(self.units):
            raise SpecError(
                f"conditions {self.conditions.shape}, fields {self.field.shape}, "
                f"names {self.names}: need one row per shot and one name and unit "
                "per condition"
            )
        if not (np.isfinite(self.conditions).all() and np.isfinite(self.field).all()):
            raise SpecError(
                "the pulse dataset holds non-finite values; drop failed samples first"
            )

    @classmethod
    def from_outputs(
        cls,
        outputs: Mapping[str, npt.NDArray[Any]],
        settings: Mapping[str, npt.ArrayLike],
        *,
        names: Sequence[str],
        units: Sequence[str],
        dt: float,
        photon_energy: float,
    ) -> PulseDataset:
        """From a simulator's outputs (``field_real``, ``field_imag``) and the
        settings they were simulated at; failed (non-finite) shots are dropped."""
        field = outputs["field_real"] + 1j * outputs["field_imag"]
        conditions = np.column_stack([np.asarray(settings[n], float) for n in names])
        ok = np.isfinite(field).all(axis=1) & np.isfinite(conditions).all(axis=1)
        return cls(
            conditions[ok], field[ok], dt, photon_energy, tuple(names), tuple(units)
        )

    @classmethod
    def from_xarray(cls, dataset: Any, names: Sequence[str]) -> PulseDataset:
        """From a scan dataset of the ``sase`` simulator (an xarray Dataset with
        ``field_real`` and ``field_imag`` on (sample, time), the settings as
        variables, and ``photon_energy`` as a coordinate)."""
        try:
            time_axis = np.asarray(dataset["time"].values, dtype=np.float64)
            energy_axis = np.asarray(dataset["photon_energy"].values, dtype=np.float64)
            outputs = {
                key: np.asarray(dataset[key].values)
                for key in ("field_real", "field_imag")
            }
            settings = {n: np.asarray(dataset[n].values) for n in names}
            units = [str(dataset[n].attrs.get("units", "")) for n in names]
        except KeyError as exc:
            raise DatastoreError(
                f"the dataset lacks {exc}; a fel-gan trains on a sase scan with "
                f"field_real, field_imag, time, photon_energy and {list(names)}"
            ) from exc
        centre = float(energy_axis[energy_axis.size // 2])
        dt = float(time_axis[1] - time_axis[0])
        return cls.from_outputs(
            outputs, settings, names=names, units=units, dt=dt, photon_energy=centre
        )

    def unique_conditions(self) -> npt.NDArray[np.float64]:
        """The distinct condition rows, sorted."""
        return np.unique(self.conditions, axis=0)

    def at(self, condition: npt.ArrayLike) -> npt.NDArray[np.complexfloating[Any, Any]]:
        """The fields simulated at exactly one condition row."""
        mask = np.all(self.conditions == np.asarray(condition), axis=1)
        return self.field[mask]


@dataclass(frozen=True)
class _Tensors:
    x: Tensor
    """Fields of unit mean power, (shots, 2, n)."""
    c: Tensor
    """Scaled conditions, (shots, k)."""


def train(
    data: PulseDataset,
    config: TrainingConfig | None = None,
    on_epoch: EpochCallback | None = None,
) -> FelGan:
    """Train a generator on ``data`` and return it.

    ``on_epoch(epoch, metrics)`` is called after every epoch with the mean
    critic and generator losses, the critic's Wasserstein estimate, the
    gradient penalty, the learning rate and the seconds taken.
    """
    config = config or TrainingConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    noise = torch.Generator().manual_seed(config.seed)

    try:
        gan_config = _gan_config(data, config)
    except ValidationError as exc:
        raise SpecError(f"cannot set up a generator for this dataset: {exc}") from exc
    tensors = _normalised(data, gan_config)
    gan = FelGan(gan_config)
    critic = Critic(gan_config)
    _calibrate_output(gan.generator, tensors.c, noise)
    optimizers = [
        torch.optim.Adam(net.parameters(), lr=config.learning_rate, betas=config.betas)
        for net in (gan.generator, critic)
    ]
    schedules = [
        torch.optim.lr_scheduler.LinearLR(
            opt, 1.0, config.final_learning_rate / config.learning_rate, config.epochs
        )
        for opt in optimizers
    ]
    log.info(
        "training fel-gan on %s shots at %s conditions for %s epochs",
        len(data.field),
        len(data.unique_conditions()),
        config.epochs,
    )

    average = AveragedModel(gan.generator, avg_fn=_moving_average(config.average))
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        metrics = _epoch(
            gan.generator, critic, optimizers, tensors, config, noise, average
        )
        metrics["learning_rate"] = float(schedules[0].get_last_lr()[0])
        for schedule in schedules:
            schedule.step()
        metrics["seconds"] = time.perf_counter() - start
        log.debug("epoch %s: %s", epoch, metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    if config.average and config.epochs:
        gan.generator.load_state_dict(average.module.state_dict())
    gan.generator.eval()
    if config.calibration_shots:
        gan = calibrate_energy(gan, data, config.calibration_shots, seed=config.seed)
    return gan


def calibrate_energy(
    gan: FelGan, data: PulseDataset, shots: int, *, seed: int
) -> FelGan:
    """Correct the scale fit so that the generated mean power matches the
    training data's at every training condition.

    The log ratio of simulated to generated mean power at each distinct
    condition is fitted with the scale's own terms and added to it; the
    networks are untouched.  Only training data are used.
    """
    unique = data.unique_conditions()
    wanted = np.array([np.mean(np.abs(data.at(row)) ** 2) for row in unique])
    field = gan.sample_field(np.repeat(unique, shots, axis=0), seed=seed)
    got = np.mean(np.abs(field.reshape(len(unique), shots, -1)) ** 2, axis=(1, 2))
    scaled = scale_conditions(gan.config, unique)
    features = monomials(scaled, gan.config.scale_terms).double()
    ratio = torch.as_tensor(np.log(wanted / got), dtype=torch.float64).unsqueeze(1)
    correction = torch.linalg.lstsq(features, ratio, driver="gelsd").solution
    coefficients = [
        a + float(b)
        for a, b in zip(gan.config.scale_coefficients, correction[:, 0], strict=True)
    ]
    log.info(
        "calibrated fel-gan energy scale: mean power off by %.1f %% at most before",
        100 * float(np.max(np.abs(got / wanted - 1))),
    )
    config = gan.config.model_copy(update={"scale_coefficients": coefficients})
    return FelGan(config, gan.generator)


def _epoch(
    generator: Generator,
    critic: Critic,
    optimizers: list[torch.optim.Adam],
    tensors: _Tensors,
    config: TrainingConfig,
    noise: torch.Generator,
    average: AveragedModel,
) -> dict[str, float]:
    """One pass over the data: a critic step per batch, a generator step after
    every ``critic_steps`` of them (each followed by an update of the
    generator's moving ``average``); returns the epoch's mean metrics."""
    g_opt, c_opt = optimizers
    sums = {"critic_loss": 0.0, "wasserstein": 0.0, "gradient_penalty": 0.0}
    g_losses: list[float] = []
    order = torch.randperm(len(tensors.x), generator=noise)
    batches = torch.split(order, config.batch_size)
    generator.train()
    for step, index in enumerate(batches, start=1):
        x, c = tensors.x[index], tensors.c[index]
        for key, value in _critic_step(
            generator, critic, c_opt, x, c, config, noise
        ).items():
            sums[key] += value
        if step % config.critic_steps == 0:
            g_losses.append(_generator_step(generator, critic, g_opt, c, noise))
            average.update_parameters(generator)
    metrics = {key: value / len(batches) for key, value in sums.items()}
    metrics["generator_loss"] = float(np.mean(g_losses)) if g_losses else math.nan
    return metrics


def _moving_average(decay: float) -> Callable[[Tensor, Tensor, Tensor | int], Tensor]:
    """An exponential moving average whose decay warms up as (1 + n) / (10 + n)
    over the first steps, so that a short run is not held at its start."""

    def update(averaged: Tensor, current: Tensor, n: Tensor | int) -> Tensor:
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        return d * averaged + (1 - d) * current

    return update


def _gan_config(data: PulseDataset, config: TrainingConfig) -> GanConfig:
    """The generator's config: condition ranges from the data, the scale fit."""
    specs = [
        ConditionSpec(name=name, unit=unit, low=float(low), high=float(high))
        for name, unit, low, high in zip(
            data.names,
            data.units,
            data.conditions.min(axis=0),
            data.conditions.max(axis=0),
            strict=True,
        )
    ]
    gan_config = GanConfig(
        conditions=specs,
        n_time=data.field.shape[1],
        dt=data.dt,
        photon_energy=data.photon_energy,
        generator_width=config.generator_width,
        saturation=config.saturation,
        critic_width=config.critic_width,
    )
    # Fit log S(c) to the mean power of each distinct condition.
    unique = data.unique_conditions()
    mean_power = np.array([np.mean(np.abs(data.at(row)) ** 2) for row in unique])
    terms, coefficients = fit_scale(
        scale_conditions(gan_config, unique), torch.as_tensor(mean_power)
    )
    return gan_config.model_copy(
        update={"scale_terms": terms, "scale_coefficients": coefficients}
    )


def _normalised(data: PulseDataset, gan_config: GanConfig) -> _Tensors:
    """Fields divided by sqrt(S(c)), as (shots, 2, n) float32, and conditions."""
    c = scale_conditions(gan_config, data.conditions)
    amplitude = torch.exp(0.5 * log_scale(gan_config, c)).numpy()[:, None]
    field = data.field / amplitude
    x = torch.as_tensor(np.stack([field.real, field.imag], axis=1), dtype=torch.float32)
    return _Tensors(x=x, c=c)


def _calibrate_output(generator: Generator, c: Tensor, noise: torch.Generator) -> None:
    """Scale the generator's output so that, untrained, it already draws
    fields of unit mean power, the scale of the normalised data."""
    with torch.no_grad():
        sample = c[torch.randperm(len(c), generator=noise)[:256]]
        power = generator(generator.noise(len(sample), noise), sample).pow(2).sum(1)
        generator.scale_output(power.mean().rsqrt())


def _critic_step(
    generator: Generator,
    critic: Critic,
    optimizer: torch.optim.Optimizer,
    real: Tensor,
    c: Tensor,
    config: TrainingConfig,
    noise: torch.Generator,
) -> dict[str, float]:
    """One critic update; returns its loss, Wasserstein estimate and penalty."""
    z = generator.noise(len(real), noise)
    with torch.no_grad():
        fake = generator(z, c)
    real_score = critic(real, c).mean()
    fake_score = critic(fake, c).mean()

    # Gradient penalty on random points between simulated and generated fields.
    mix = torch.rand(len(real), 1, 1, generator=noise)
    between = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(between, c).sum(), between, create_graph=True)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()

    loss = fake_score - real_score + config.gradient_penalty * penalty
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "critic_loss": float(loss.detach()),
        "wasserstein": float((real_score - fake_score).detach()),
        "gradient_penalty": float(penalty.detach()),
    }


def _generator_step(
    generator: Generator,
    critic: Critic,
    optimizer: torch.optim.Optimizer,
    c: Tensor,
    noise: torch.Generator,
) -> float:
    """One generator update at the batch's conditions; returns its loss."""
    z = generator.noise(len(c), noise)
    loss = -critic(generator(z, c), c).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# -- keeping a trained generator ---------------------------------------------


def to_files(gan: FelGan) -> dict[str, bytes]:
    """The generator as named files: ``config.json`` and ``generator.pt``."""
    weights = io.BytesIO()
    torch.save(gan.generator.state_dict(), weights)
    return {
        CONFIG_FILE: json.dumps(gan.config.dump(), indent=2).encode(),
        WEIGHTS_FILE: weights.getvalue(),
    }


def from_files(files: Mapping[str, bytes], where: str) -> FelGan:
    """Rebuild a generator from :func:`to_files`' files, without executing
    pickled code; ``where`` names their origin in errors."""
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in files]
    if missing:
        raise DatastoreError(
            f"no fel-gan generator in {where}: {', '.join(missing)} missing; "
            f"expected {CONFIG_FILE} and {WEIGHTS_FILE} written by save()"
        )
    try:
        config = GanConfig.load(json.loads(files[CONFIG_FILE]))
        state = torch.load(
            io.BytesIO(files[WEIGHTS_FILE]), weights_only=True, map_location="cpu"
        )
    except (ValidationError, json.JSONDecodeError) as exc:
        raise DatastoreError(
            f"{where}: {CONFIG_FILE} is not a fel-gan config: {exc}"
        ) from exc
    except (RuntimeError, pickle.UnpicklingError) as exc:
        raise DatastoreError(
            f"{where}: {WEIGHTS_FILE} is not a state_dict: {exc}"
        ) from exc
    gan = FelGan(config)
    try:
        gan.generator.load_state_dict(state)
    except RuntimeError as exc:
        raise DatastoreError(
            f"the weights in {where} do not fit the generator that "
            f"{CONFIG_FILE} describes: {exc}"
        ) from exc
    gan.generator.eval()
    return gan


def save(gan: FelGan, directory: str | Path) -> Path:
    """Write ``config.json`` and ``generator.pt`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in to_files(gan).items():
        (folder / name).write_bytes(data)
    log.info("saved fel-gan generator to %s", folder)
    return folder


def load(directory: str | Path) -> FelGan:
    """Rebuild a generator saved by :func:`save`, without executing pickled code."""
    folder = Path(directory)
    files = {
        name: (folder / name).read_bytes()
        for name in (CONFIG_FILE, WEIGHTS_FILE)
        if (folder / name).is_file()
    }
    return from_files(files, str(folder))
