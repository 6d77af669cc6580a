"""The inverse model: target outputs to settings that give them.

Three choices make it useful as a warm start:

- **Any subset of targets.**  In each training example a random subset of
  the outputs is hidden (the network sees the values times a mask, and the
  mask), so one model answers requests that name any of its outputs.
- **Tandem training.**  Many settings give the same outputs, so regressing
  the scan's settings would average over them and land between solutions.
  Instead the proposed settings go through the forward surrogate, and the
  loss is the distance of its outputs to the targets: any solution is a
  good one.  A small weight on the scan's settings keeps answers near
  settings the scan visited.
- **Several candidates.**  Solutions come in branches (a bunch compressor
  gives one bunch length both under- and over-compressed).  The network has
  ``candidates`` heads trained winner-takes-all, so each head settles on a
  branch; the service evaluates every candidate and starts from the best.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field

from wakefield.config import StrictModel
from wakefield.errors import ServiceError
from wakefield.variables import Setting

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]
"""Settings (samples x settings, physical units) -> outputs (samples x outputs,
physical units), differentiable: the forward surrogate."""


class InverseConfig(StrictModel):
    """How the inverse model is trained."""

    layers: list[int] = Field(default=[256, 256, 256], min_length=1)
    candidates: int = Field(default=8, ge=1, le=32)
    """Settings proposed per request (heads trained winner-takes-all)."""
    epochs: int = Field(default=400, ge=1)
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    patience: int = Field(default=40, ge=1)
    """Stop after this many epochs without a better validation loss."""
    keep_probability: float = Field(default=0.9, gt=0, le=1)
    """Chance that each output is shown in a training example."""
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = 0
    mode: Literal["tandem", "settings"] = "settings"
    """``tandem``: learn settings whose outputs, through the forward surrogate,
    match the targets; ``settings``: regress the scan's own settings."""
    settings_weight: float = Field(default=0.02, ge=0)
    """In tandem mode, how much the scan's settings still count."""
    spread: float = Field(default=0.05, ge=0, lt=1)
    """Share of the loss every head gets, not only the winner (no head dies)."""


def _network(n_in: int, n_out: int, layers: list[int]) -> torch.nn.Sequential:
    modules: list[torch.nn.Module] = []
    width = n_in
    for size in layers:
        modules += [torch.nn.Linear(width, size), torch.nn.ELU()]
        width = size
    modules.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*modules)


@dataclass
class InverseModel:
    settings: list[Setting]
    outputs: list[str]
    out_low: np.ndarray
    out_high: np.ndarray
    layers: list[int]
    net: torch.nn.Sequential
    candidates: int = 1
    squash: bool = False
    """The network's outputs pass through tanh (tandem models)."""

    def _inputs(self, targets: dict[str, float]) -> torch.Tensor:
        unknown = sorted(set(targets) - set(self.outputs))
        if unknown:
            raise ServiceError(
                f"the inverse model knows no outputs {unknown}; it knows {self.outputs}"
            )
        values = np.zeros(len(self.outputs))
        mask = np.zeros(len(self.outputs))
        for i, name in enumerate(self.outputs):
            if name in targets:
                values[i] = _scale(targets[name], self.out_low[i], self.out_high[i])
                mask[i] = 1.0
        return torch.tensor(np.concatenate([values * mask, mask]), dtype=torch.float32)

    def propose(self, targets: dict[str, float]) -> np.ndarray:
        """Candidate settings (candidates x settings, physical units, inside limits)."""
        with torch.no_grad():
            raw = self.net(self._inputs(targets)[None])[0]
            u = torch.tanh(raw) if self.squash else raw
        u = u.reshape(self.candidates, len(self.settings)).numpy().astype(float)
        low = np.array([s.low for s in self.settings])
        high = np.array([s.high for s in self.settings])
        return np.clip(low + (np.clip(u, -1, 1) + 1) * 0.5 * (high - low), low, high)

    def predict(self, targets: dict[str, float]) -> np.ndarray:
        """The first candidate's settings (for a single guess)."""
        return self.propose(targets)[0]

    def to_files(self) -> dict[str, bytes]:
        """Weights (a state dict, loaded without pickle) and the JSON to rebuild it."""
        buffer = io.BytesIO()
        torch.save(self.net.state_dict(), buffer)
        meta = {
            "settings": [s.dump() for s in self.settings],
            "outputs": self.outputs,
            "out_low": self.out_low.tolist(),
            "out_high": self.out_high.tolist(),
            "layers": self.layers,
            "candidates": self.candidates,
            "squash": self.squash,
        }
        return {
            "weights.pt": buffer.getvalue(),
            "inverse.json": json.dumps(meta).encode(),
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> InverseModel:
        meta = json.loads(files["inverse.json"])
        settings = [Setting.load(s) for s in meta["settings"]]
        candidates = int(meta.get("candidates", 1))
        net = _network(
            2 * len(meta["outputs"]), candidates * len(settings), meta["layers"]
        )
        net.load_state_dict(
            torch.load(io.BytesIO(files["weights.pt"]), weights_only=True)
        )
        net.eval()
        return cls(
            settings,
            meta["outputs"],
            np.array(meta["out_low"]),
            np.array(meta["out_high"]),
            meta["layers"],
            net,
            candidates,
            bool(meta.get("squash", False)),
        )


def _scale(value: Any, low: Any, high: Any) -> Any:
    span = np.where(
        np.asarray(high) > np.asarray(low), np.asarray(high) - np.asarray(low), 1.0
    )
    return 2.0 * (np.asarray(value) - low) / span - 1.0


@dataclass
class _Scan:
    """A scan's good samples, scaled to [-1, 1]."""

    x: torch.Tensor
    y: torch.Tensor
    out_low: np.ndarray
    out_high: np.ndarray


def _scan(ds: xr.Dataset, settings: list[Setting], outputs: list[str]) -> _Scan:
    missing = [n for n in [s.name for s in settings] + outputs if n not in ds]
    if missing:
        raise ServiceError(f"the scan has no variables {missing}")
    good = (
        ds["status"].values == 0
        if "status" in ds
        else np.ones(ds.sizes["sample"], bool)
    )
    y_raw = np.stack([ds[o].values[good] for o in outputs], axis=1).astype(float)
    x_raw = np.stack([ds[s.name].values[good] for s in settings], axis=1).astype(float)
    finite = np.isfinite(y_raw).all(axis=1) & np.isfinite(x_raw).all(axis=1)
    y_raw, x_raw = y_raw[finite], x_raw[finite]
    if len(y_raw) < 20:
        raise ServiceError(
            f"only {len(y_raw)} good samples; the inverse model needs at least 20"
        )
    low = np.array([s.low for s in settings])
    high = np.array([s.high for s in settings])
    out_low, out_high = y_raw.min(axis=0), y_raw.max(axis=0)
    return _Scan(
        torch.tensor(_scale(x_raw, low, high), dtype=torch.float32),
        torch.tensor(_scale(y_raw, out_low, out_high), dtype=torch.float32),
        out_low,
        out_high,
    )


def train_inverse(
    ds: xr.Dataset,
    settings: list[Setting],
    outputs: list[str],
    config: InverseConfig,
    on_epoch: Callable[[int, float], None] | None = None,
    forward: Forward | None = None,
) -> tuple[InverseModel, dict[str, Any]]:
    """Fit the inverse model on the good samples of a scan.

    In tandem mode ``forward`` (the surrogate) is required.
    """
    tandem = config.mode == "tandem"
    if tandem and forward is None:
        raise ServiceError("a tandem inverse model needs the forward surrogate")
    scan = _scan(ds, settings, outputs)
    k, d = config.candidates, len(settings)
    low_t = torch.tensor([s.low for s in settings], dtype=torch.float32)
    span_t = torch.tensor([s.high - s.low for s in settings], dtype=torch.float32)
    out_low_t = torch.tensor(scan.out_low, dtype=torch.float32)
    out_span_t = torch.tensor(_span(scan.out_low, scan.out_high), dtype=torch.float32)

    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    order = torch.randperm(len(scan.y), generator=generator)
    n_val = max(1, int(len(scan.y) * config.validation_fraction))
    val, train = order[:n_val], order[n_val:]
    net = _network(2 * len(outputs), k * d, config.layers)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, config.patience // 4)
    )

    def random_mask(n: int) -> torch.Tensor:
        mask = (
            torch.rand(n, len(outputs), generator=generator) < config.keep_probability
        ).float()
        empty = mask.sum(dim=1) == 0
        mask[
            empty, torch.randint(len(outputs), (int(empty.sum()),), generator=generator)
        ] = 1.0
        return mask

    def loss_of(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raw = net(torch.cat([scan.y[rows] * mask, mask], dim=1)).reshape(
            len(rows), k, d
        )
        target_x = scan.x[rows][:, None, :]
        if tandem:
            assert forward is not None
            u = torch.tanh(raw)
            physical = (low_t + (u + 1.0) * 0.5 * span_t).reshape(-1, d)
            predicted = 2.0 * (forward(physical) - out_low_t) / out_span_t - 1.0
            miss = (
                (predicted.reshape(len(rows), k, -1) - scan.y[rows][:, None, :]) ** 2
                * mask[:, None, :]
            ).sum(-1) / mask.sum(-1, keepdim=True)
            miss = miss + config.settings_weight * ((u - target_x) ** 2).mean(-1)
        else:
            miss = ((raw - target_x) ** 2).mean(-1)
        # Winner takes (almost) all: each head settles on a branch of solutions.
        return (
            (1 - config.spread) * miss.min(dim=1).values
            + config.spread * miss.mean(dim=1)
        ).mean()

    val_mask = random_mask(len(val))
    best, best_state, stale, curve = float("inf"), None, 0, []
    started = time.monotonic()
    for epoch in range(config.epochs):
        net.train()
        for batch in train[torch.randperm(len(train), generator=generator)].split(
            config.batch_size
        ):
            optimizer.zero_grad()
            loss = loss_of(batch, random_mask(len(batch)))
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(loss_of(val, val_mask))
        scheduler.step(val_loss)
        curve.append(val_loss)
        if on_epoch is not None:
            on_epoch(epoch + 1, val_loss)
        if val_loss < best - 1e-7:
            best, stale = val_loss, 0
            best_state = {key: v.clone() for key, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    model = InverseModel(
        settings, outputs, scan.out_low, scan.out_high, config.layers, net, k, tandem
    )
    metrics = {
        "mode": config.mode,
        "candidates": k,
        "validation_loss": best,
        "epochs": len(curve),
        "samples": int(len(scan.y)),
        "seconds": round(time.monotonic() - started, 3),
        "curve": curve,
    }
    log.info(
        "inverse model (%s, %s candidates): %s epochs, validation loss %.4g",
        config.mode,
        k,
        len(curve),
        best,
    )
    return model, metrics


def _span(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.where(high > low, high - low, 1.0)
