"""A conditional GAN for SASE FEL pulses, and the checks of its fidelity.

``model`` holds the networks and :class:`FelGan` (a generator with its
config, drawing pulses in watts); ``training`` trains, saves and loads it;
``fidelity`` compares generated with held-out simulated pulses and decides
whether a generator may be published; ``plots`` draws the comparison.
"""

from .fidelity import (
    ConditionReport,
    FidelityThresholds,
    Pulses,
    PulseStatistics,
    SpikeCriteria,
    Verdict,
    compare,
    fixed_noise_diversity,
    statistics,
    verdict,
)
from .model import FelGan, GanConfig
from .training import PulseDataset, TrainingConfig, calibrate_energy, load, save, train

__all__ = [
    "ConditionReport",
    "FelGan",
    "FidelityThresholds",
    "GanConfig",
    "PulseDataset",
    "PulseStatistics",
    "Pulses",
    "SpikeCriteria",
    "TrainingConfig",
    "Verdict",
    "calibrate_energy",
    "compare",
    "fixed_noise_diversity",
    "load",
    "save",
    "statistics",
    "train",
    "verdict",
]
