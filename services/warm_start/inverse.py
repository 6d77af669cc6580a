"""The inverse model: target outputs to the settings that give them.

It is trained on a scan, from outputs to settings, with a random subset of
the outputs hidden in each training example (the network sees the values
times a mask, and the mask), so one model answers requests that name any
subset of its outputs.  Many settings can give the same outputs; the model
predicts a plausible one, which is all a warm start needs: a local
optimiser refines it.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from pydantic import Field

from wakefield.config import StrictModel
from wakefield.errors import ServiceError
from wakefield.variables import Setting

log = logging.getLogger(__name__)


class InverseConfig(StrictModel):
    """How the inverse model is trained."""

    layers: list[int] = Field(default=[256, 256, 256], min_length=1)
    epochs: int = Field(default=400, ge=1)
    batch_size: int = Field(default=256, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    patience: int = Field(default=40, ge=1)
    """Stop after this many epochs without a better validation loss."""
    keep_probability: float = Field(default=0.6, gt=0, le=1)
    """Chance that each output is shown in a training example."""
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = 0


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

    def predict(self, targets: dict[str, float]) -> np.ndarray:
        """Settings (physical units, inside their limits) for the named targets."""
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
        x = torch.tensor(np.concatenate([values * mask, mask]), dtype=torch.float32)[
            None
        ]
        with torch.no_grad():
            u = self.net(x)[0].numpy().astype(float)
        low = np.array([s.low for s in self.settings])
        high = np.array([s.high for s in self.settings])
        return np.clip(low + (np.clip(u, -1, 1) + 1) * 0.5 * (high - low), low, high)

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
        }
        return {
            "weights.pt": buffer.getvalue(),
            "inverse.json": json.dumps(meta).encode(),
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> InverseModel:
        meta = json.loads(files["inverse.json"])
        settings = [Setting.load(s) for s in meta["settings"]]
        net = _network(2 * len(meta["outputs"]), len(settings), meta["layers"])
        state = torch.load(io.BytesIO(files["weights.pt"]), weights_only=True)
        net.load_state_dict(state)
        net.eval()
        return cls(
            settings,
            meta["outputs"],
            np.array(meta["out_low"]),
            np.array(meta["out_high"]),
            meta["layers"],
            net,
        )


def _scale(value: Any, low: Any, high: Any) -> Any:
    span = np.where(
        np.asarray(high) > np.asarray(low), np.asarray(high) - np.asarray(low), 1.0
    )
    return 2.0 * (np.asarray(value) - low) / span - 1.0


def train_inverse(
    ds: xr.Dataset,
    settings: list[Setting],
    outputs: list[str],
    config: InverseConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[InverseModel, dict[str, Any]]:
    """Fit the inverse model on the good samples of a scan."""
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
    if len(y_raw) < 20:
        raise ServiceError(
            f"only {len(y_raw)} good samples; the inverse model needs at least 20"
        )
    out_low, out_high = y_raw.min(axis=0), y_raw.max(axis=0)
    y = torch.tensor(_scale(y_raw, out_low, out_high), dtype=torch.float32)
    low = np.array([s.low for s in settings])
    high = np.array([s.high for s in settings])
    x = torch.tensor(_scale(x_raw, low, high), dtype=torch.float32)

    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    order = torch.randperm(len(y), generator=generator)
    n_val = max(1, int(len(y) * config.validation_fraction))
    val, train = order[:n_val], order[n_val:]
    net = _network(2 * len(outputs), len(settings), config.layers)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=config.patience // 4
    )

    def masked(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([y[rows] * mask, mask], dim=1)

    def random_mask(n: int) -> torch.Tensor:
        mask = (
            torch.rand(n, len(outputs), generator=generator) < config.keep_probability
        ).float()
        empty = mask.sum(dim=1) == 0
        mask[
            empty, torch.randint(len(outputs), (int(empty.sum()),), generator=generator)
        ] = 1.0
        return mask

    val_mask = random_mask(len(val))
    best, best_state, stale, curve = float("inf"), None, 0, []
    started = time.monotonic()
    for epoch in range(config.epochs):
        net.train()
        for batch in train[torch.randperm(len(train), generator=generator)].split(
            config.batch_size
        ):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(
                net(masked(batch, random_mask(len(batch)))), x[batch]
            )
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(
                torch.nn.functional.mse_loss(net(masked(val, val_mask)), x[val])
            )
        scheduler.step(val_loss)
        curve.append(val_loss)
        if on_epoch is not None:
            on_epoch(epoch + 1, val_loss)
        if val_loss < best - 1e-7:
            best, stale = val_loss, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    model = InverseModel(settings, outputs, out_low, out_high, config.layers, net)
    metrics = {
        "validation_mse": best,
        "epochs": len(curve),
        "samples": int(len(y)),
        "seconds": round(time.monotonic() - started, 3),
        "curve": curve,
    }
    log.info("inverse model: %s epochs, validation MSE %.4g", len(curve), best)
    return model, metrics
