"""The simulator plug-in interface.

A simulator is a batched physics model: it takes arrays of settings (one
value per sample) and returns arrays of outputs for the same samples. The
``simulation`` service kind samples the settings, fans batches out over Ray
and writes the results to one Zarr dataset; a simulator only does physics.

Simulators are found through the ``wakefield.simulators`` entry-point group
and loaded only when a workflow names one.  Writing one::

    class MySimulator(Simulator):
        name = "my-sim"
        Options = MyOptions          # a StrictModel of the simulator's own knobs

        def settings(self) -> list[Setting]: ...
        def outputs(self) -> list[Output]: ...
        def coordinates(self) -> dict[str, Coordinate]: ...
        def simulate(self, settings, rng) -> Batch: ...

and registering it in ``pyproject.toml``::

    [project.entry-points."wakefield.simulators"]
    my-sim = "my_package.my_module:MySimulator"
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .config import StrictModel
from .variables import Output, Setting


class NoOptions(StrictModel):
    """A simulator without options of its own."""


@dataclass(frozen=True)
class Coordinate:
    """Values along one output dimension (a time axis, an image's bins)."""

    values: np.ndarray
    unit: str = ""
    description: str = ""


@dataclass
class Batch:
    """What one call of :meth:`Simulator.simulate` returns.

    ``outputs`` maps each output name to an array whose first axis is the
    sample.  ``failures`` maps the index of a sample that failed to the reason;
    the service flags those samples (and any with non-finite values) in the
    dataset's ``status`` variable instead of leaving silent NaNs.
    """

    outputs: dict[str, np.ndarray]
    failures: dict[int, str] = field(default_factory=dict)


class Simulator(ABC):
    """A batched physics model from settings to outputs."""

    name: ClassVar[str]
    """The name workflows use to choose this simulator."""
    Options: ClassVar[type[StrictModel]] = NoOptions
    """The model of this simulator's own options, validated from the workflow."""

    def __init__(self, options: StrictModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def settings(self) -> list[Setting]:
        """The settings this simulator accepts, with units, ranges and defaults."""

    @abstractmethod
    def outputs(self) -> list[Output]:
        """The outputs it computes for every sample."""

    def coordinates(self) -> dict[str, Coordinate]:
        """Values along the non-sample dimensions its outputs use."""
        return {}

    @abstractmethod
    def simulate(
        self, settings: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> Batch:
        """Simulate one batch.

        ``settings`` maps every name from :meth:`settings` to a 1-D array of
        the same length (the samples); ``rng`` is the only source of randomness
        allowed, so that the same seed gives the same dataset.
        """

    def provenance(self) -> dict[str, Any]:
        """What made these results: package versions, lattice and its hash."""
        return {"simulator": self.name}
