"""``ticker``: a streaming source of events, optionally with a dataset each.

It emits one event every ``interval`` seconds, ``count`` times or until the
run is cancelled.  With ``samples`` > 0 each event carries the reference of
a freshly written dataset of a seeded random walk (one variable per
``signals`` entry), standing in for a diagnostic that streams measurements.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from pydantic import Field

from wakefield.config import Duration, StrictModel
from wakefield.service import DATASET_READY, TICK, HandlerContext, Service


class TickerConfig(StrictModel):
    interval: Duration = 1.0
    """Seconds between events."""
    count: int | None = Field(default=None, ge=1)
    """Events to emit in all; absent: until cancelled."""
    samples: int = Field(default=0, ge=0)
    """Rows of the dataset written with each event; 0 writes none."""
    signals: list[str] = ["signal"]
    """Variables of that dataset."""
    seed: int = 0


class Ticker(Service):
    """Emits events at a steady rate, each with an optional dataset."""

    kind = "ticker"
    Config = TickerConfig
    streaming = True
    summary = "Emit an event every interval (count times or until cancelled), optionally with a dataset."
    outputs = {
        "ticks": "org.wakefield.tick, or org.wakefield.dataset.ready with samples > 0"
    }

    def tick(self, ctx: HandlerContext) -> float | None:
        config: TickerConfig = self.config  # type: ignore[assignment]
        number = int(ctx.event.data["tick"]) if ctx.event and ctx.event.data else 0
        if config.count is not None and number >= config.count:
            return None

        if config.samples:
            ds = random_walk(config, number)
            ref = ctx.datastore.write_dataset(ds, ctx.dataset_uri("walk.zarr"))
            ctx.emit(
                "ticks",
                DATASET_READY,
                {"tick": number, "samples": config.samples},
                dataref=ref,
            )
        else:
            ctx.emit("ticks", TICK, {"tick": number})
        ctx.progress(number + 1, config.count or 0, f"tick {number + 1}")
        return config.interval


def random_walk(config: TickerConfig, number: int) -> xr.Dataset:
    """A seeded random walk per signal: the same tick number gives the same data."""
    rng = np.random.default_rng([config.seed, number])
    steps = rng.normal(size=(len(config.signals), config.samples))
    walks = np.cumsum(steps, axis=1)
    return xr.Dataset(
        {
            name: (
                "sample",
                walks[i],
                {"units": "1", "long_name": f"random walk {name}"},
            )
            for i, name in enumerate(config.signals)
        },
        attrs={"tick": number, "seed": config.seed},
    )
