"""The training loop, usable without the service: :func:`train` takes an
``xarray.Dataset`` (a scan) and a :class:`TrainConfig`.

Each member of an ensemble is trained on the same split from its own seed
(weights, batch order, input noise, dropout masks).  An epoch shuffles the
training samples into batches; its loss is the mean squared error of the
scaled scalar outputs plus ``image_weight`` times that of the scaled image
pixels, plus the L1 and L2 penalties on the weights.  After each epoch the
validation loss is measured; the weights with the lowest one are kept, and
training stops once it has not improved for ``patience`` epochs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from pydantic import ValidationError
from torch import Tensor, nn

from wakefield.errors import SpecError
from wakefield.events import DataRef

from .config import (
    Adadelta,
    Adagrad,
    Adam,
    CosineDecay,
    ExponentialDecay,
    Lbfgs,
    Nadam,
    NoDecay,
    Optimizer,
    PlateauDecay,
    RmsProp,
    Schedule,
    Sgd,
    StepDecay,
    TrainConfig,
)
from .data import (
    Normalisation,
    Samples,
    Variables,
    good_samples,
    select_variables,
    split,
)
from .metrics import Curve, Metrics, output_error
from .model import SurrogateModel
from .network import (
    Architecture,
    Ensemble,
    PcaDecoder,
    SurrogateNet,
    initialise,
    principal_components,
    weights,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochReport:
    """What one finished epoch of one member reports."""

    member: int
    """0-based index of the ensemble member."""
    members: int
    epoch: int
    """0-based epoch."""
    epochs: int
    """The most epochs this member may train."""
    train_loss: float
    validation_loss: float
    lr: float
    """The learning rate of the epoch."""


EpochCallback = Callable[[EpochReport], None]


@dataclass(frozen=True)
class _Part:
    """One part of the split as float32 tensors in the network's scale."""

    x: Tensor
    y: Tensor
    image: Tensor | None

    def __len__(self) -> int:
        return len(self.x)


def train(
    ds: xr.Dataset,
    config: TrainConfig | Mapping[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
    *,
    dataset: DataRef | None = None,
) -> tuple[SurrogateModel, Metrics]:
    """Train a surrogate on a scan; returns the model and its test metrics.

    ``config`` may be a :class:`TrainConfig` or its plain-data form;
    ``on_epoch`` is called after every epoch of every member; ``dataset``
    is the scan's reference, recorded in the model.
    """
    config = _config(config)
    variables = select_variables(ds, config)
    samples = good_samples(ds, variables)
    train_rows, val_rows, test_rows = split(
        len(samples), config.training.split, config.training.seed
    )
    parts = {
        "train": samples.take(train_rows),
        "validation": samples.take(val_rows),
        "test": samples.take(test_rows),
    }
    normalisation = Normalisation.fit(variables, parts["train"], config.transforms)
    image_shape = variables.image.shape if variables.image else None
    architecture = Architecture(
        inputs=len(variables.settings),
        outputs=len(variables.outputs),
        network=config.network,
        image_shape=(image_shape[0], image_shape[1]) if image_shape else None,
    )

    members = (
        config.uncertainty.members if config.uncertainty.method == "ensemble" else 1
    )
    seeds = np.random.SeedSequence(config.training.seed).generate_state(members)
    train_part = _tensors(parts["train"], normalisation)
    val_part = _tensors(parts["validation"], normalisation)
    ensemble = Ensemble(architecture, members)
    basis = None
    if train_part.image is not None and config.network.image_head == "pca":
        basis = principal_components(train_part.image, config.network.image_components)
    curves = []
    started = time.monotonic()
    with _threads(config.training.threads):
        for m in range(members):
            net, curve = _fit_member(
                architecture,
                config,
                train_part,
                val_part,
                int(seeds[m]),
                m,
                members,
                on_epoch,
                basis,
            )
            ensemble.members[m].load_state_dict(net.state_dict())
            curves.append(curve)
    seconds = time.monotonic() - started

    model = SurrogateModel(
        variables=variables,
        normalisation=normalisation,
        architecture=architecture,
        ensemble=ensemble,
        uncertainty=config.uncertainty,
        training=config,
        dataset=dataset,
    )
    held_out = "test" if len(parts["test"]) else "validation"
    metrics = evaluate(model, parts[held_out], parts["train"], curves=curves)
    metrics.samples = {k: len(v) for k, v in parts.items()}
    metrics.seconds = seconds
    metrics.evaluated_on = held_out
    model.metrics = metrics
    log.info(
        "trained %s member(s) on %s samples in %.1f s; worst MAE %.3g %% of range",
        members,
        len(parts["train"]),
        seconds,
        metrics.summary()["max_mae_percent"] or math.nan,
    )
    return model, metrics


def _config(config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        if type(config) is TrainConfig:
            return config
        # A service config: keep what training needs (the model records it).
        fields = {
            k: v for k, v in config.dump().items() if k in TrainConfig.model_fields
        }
        return TrainConfig.load(fields)
    try:
        return TrainConfig.load(dict(config or {}))
    except ValidationError as exc:
        raise SpecError(f"surrogate training config is not valid: {exc}") from exc


def _tensors(part: Samples, normalisation: Normalisation) -> _Part:
    image = None
    if part.image is not None:
        image = torch.as_tensor(
            normalisation.scale_image(part.image), dtype=torch.float32
        )
    return _Part(
        x=torch.as_tensor(normalisation.scale_inputs(part.x), dtype=torch.float32),
        y=torch.as_tensor(normalisation.scale_outputs(part.y), dtype=torch.float32),
        image=image,
    )


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_member(
    architecture: Architecture,
    config: TrainConfig,
    train_part: _Part,
    val_part: _Part,
    seed: int,
    member: int,
    members: int,
    on_epoch: EpochCallback | None,
    basis: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[SurrogateNet, Curve]:
    """Train one network from ``seed``; returns it with its best weights.
    ``basis``: the principal components a ``pca`` image head uses."""
    settings = config.training
    curve = Curve()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SurrogateNet(architecture)
        initialise(net, config.network)
        if basis is not None and isinstance(net.decoder, PcaDecoder):
            net.decoder.set_basis(*basis)
        generator = torch.Generator().manual_seed(seed)
        optimizer = make_optimizer(net.parameters(), config.optimizer)
        scheduler = make_scheduler(optimizer, config.schedule, settings.epochs)
        best, best_state, stale = math.inf, copy.deepcopy(net.state_dict()), 0

        for epoch in range(settings.epochs):
            lr = float(optimizer.param_groups[0]["lr"])
            train_loss = _epoch(net, optimizer, train_part, config, generator)
            val_loss = _loss(net, val_part, config)
            curve.train.append(train_loss)
            curve.validation.append(val_loss)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            elif scheduler is not None:
                scheduler.step()

            if val_loss < best:
                best, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
                curve.best_epoch = epoch
            else:
                stale += 1
            if on_epoch is not None:
                on_epoch(
                    EpochReport(
                        member,
                        members,
                        epoch,
                        settings.epochs,
                        train_loss,
                        val_loss,
                        lr,
                    )
                )
            if not math.isfinite(train_loss):
                log.warning(
                    "member %s: training loss is %s at epoch %s; stopping",
                    member,
                    train_loss,
                    epoch,
                )
                break
            if settings.patience is not None and stale >= settings.patience:
                log.debug("member %s stops early at epoch %s", member, epoch)
                break
        net.load_state_dict(best_state)
    return net.eval(), curve


def _epoch(
    net: SurrogateNet,
    optimizer: torch.optim.Optimizer,
    part: _Part,
    config: TrainConfig,
    generator: torch.Generator,
) -> float:
    """One pass over the training part; returns its mean data loss."""
    settings = config.training
    net.train()
    n = len(part)
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, settings.batch_size):
        rows = order[start : start + settings.batch_size]
        x = part.x[rows]
        if settings.input_noise > 0:
            x = x + settings.input_noise * torch.randn(x.shape, generator=generator)
        y = part.y[rows]
        image = part.image[rows] if part.image is not None else None
        last: list[float] = [math.nan]

        def closure(
            x: Tensor = x,
            y: Tensor = y,
            image: Tensor | None = image,
            last: list[float] = last,
        ) -> Tensor:
            optimizer.zero_grad()
            data = _data_loss(net(x), y, image, config)
            loss = data + _penalty(net, config)
            loss.backward()  # type: ignore[no-untyped-call]
            last[0] = float(data.detach())
            return loss

        if isinstance(optimizer, torch.optim.LBFGS):
            optimizer.step(closure)  # type: ignore[no-untyped-call]
        else:
            closure()
            optimizer.step()
        total += last[0] * len(rows)
    return total / n


def _loss(net: SurrogateNet, part: _Part, config: TrainConfig) -> float:
    net.eval()
    with torch.no_grad():
        return float(_data_loss(net(part.x), part.y, part.image, config))


def _data_loss(
    predicted: tuple[Tensor, Tensor | None],
    y: Tensor,
    image: Tensor | None,
    config: TrainConfig,
) -> Tensor:
    scalars, picture = predicted
    loss = torch.zeros(())
    if y.shape[1]:
        loss = loss + nn.functional.mse_loss(scalars, y)
    if image is not None and picture is not None:
        loss = loss + config.training.image_weight * nn.functional.mse_loss(
            picture, image
        )
    return loss


def _penalty(net: nn.Module, config: TrainConfig) -> Tensor:
    l1, l2 = config.training.l1, config.training.l2
    penalty = torch.zeros(())
    if l1 == 0 and l2 == 0:
        return penalty
    for w in weights(net):
        if l1:
            penalty = penalty + l1 * w.abs().sum()
        if l2:
            penalty = penalty + l2 * w.pow(2).sum()
    return penalty


def make_optimizer(params: Any, choice: Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer a config names."""
    match choice:
        case Sgd():
            return torch.optim.SGD(
                params, lr=choice.lr, momentum=choice.momentum, nesterov=choice.nesterov
            )
        case Adagrad():
            return torch.optim.Adagrad(params, lr=choice.lr)
        case Adadelta():
            return torch.optim.Adadelta(params, lr=choice.lr, rho=choice.rho)
        case RmsProp():
            return torch.optim.RMSprop(
                params, lr=choice.lr, alpha=choice.alpha, momentum=choice.momentum
            )
        case Adam():
            return torch.optim.Adam(params, lr=choice.lr, betas=choice.betas)
        case Nadam():
            return torch.optim.NAdam(params, lr=choice.lr, betas=choice.betas)
        case Lbfgs():
            return torch.optim.LBFGS(
                params,
                lr=choice.lr,
                max_iter=choice.max_iter,
                history_size=choice.history_size,
                line_search_fn="strong_wolfe",
            )
    raise SpecError(f"unknown optimizer {choice!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, choice: Schedule, epochs: int
) -> Any:
    """The learning-rate schedule a config names (None for a constant rate)."""
    sched = torch.optim.lr_scheduler
    match choice:
        case NoDecay():
            return None
        case ExponentialDecay():
            return sched.ExponentialLR(optimizer, gamma=choice.gamma)
        case StepDecay():
            return sched.StepLR(optimizer, step_size=choice.step, gamma=choice.gamma)
        case CosineDecay():
            return sched.CosineAnnealingLR(
                optimizer, T_max=epochs, eta_min=choice.min_lr
            )
        case PlateauDecay():
            return sched.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=choice.factor,
                patience=choice.patience,
                min_lr=choice.min_lr,
            )
    raise SpecError(f"unknown schedule {choice!r}")


def evaluate(
    model: SurrogateModel,
    part: Samples,
    train_part: Samples,
    *,
    curves: list[Curve] | None = None,
) -> Metrics:
    """Errors of ``model`` on ``part``; ranges come from ``train_part``."""
    prediction = model.predict(part.x, policy={s.name: "clip" for s in model.settings})
    errors = {}
    for j, output in enumerate(model.outputs):
        span = float(train_part.y[:, j].max() - train_part.y[:, j].min())
        errors[output.name] = output_error(
            part.y[:, j], prediction.mean[output.name], span, output.unit
        )
    image_error = None
    if (
        model.image is not None
        and part.image is not None
        and prediction.image is not None
    ):
        assert train_part.image is not None
        span = float(train_part.image.max() - train_part.image.min())
        image_error = output_error(part.image, prediction.image, span, model.image.unit)
    return Metrics(
        outputs=errors,
        image=image_error,
        curves=curves or [],
        samples={"evaluated": len(part)},
    )


__all__ = ["EpochCallback", "EpochReport", "Variables", "evaluate", "train"]
