"""Training the trip classifier: seeded stratified splits, the CNN and the forest.

:func:`train_trip_classifier` takes a labelled dataset as the
``srf-cavity`` simulator writes it (``waveform`` with dims sample, cavity,
signal, time; ``fault`` and ``cavity_label`` as integer codes with their
``categories``), splits it into train, validation and test sets stratified
by fault type and cavity, trains both models with class weights against
imbalance (the CNN with early stopping on the validation loss), measures
them on the test set and decides whether the CNN may be promoted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import xarray as xr
from pydantic import Field
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from torch import nn

from wakefield.config import StrictModel
from wakefield.errors import ServiceError

from .features import dataset_features
from .metrics import (
    ClassificationReport,
    PromotionDecision,
    PromotionGate,
    classification_report,
    promotion_decision,
)
from .models import CnnConfig, Normalizer, TreeEnsemble, TripCNN, predict_cnn, save_cnn

log = logging.getLogger(__name__)

__all__ = [
    "Split",
    "TrainConfig",
    "TrainingResult",
    "stratified_split",
    "train_trip_classifier",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class TrainConfig(StrictModel):
    """How the trip classifier is trained and judged."""

    seed: int = 0
    """Seeds the split, the weights' initialisation, the batches and the forest."""
    validation_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0.0, lt=0.5)
    epochs: int = Field(default=40, ge=1)
    """Most epochs the CNN trains for."""
    patience: int = Field(default=6, ge=1)
    """Epochs without a lower validation loss before training stops."""
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    balance: Literal["class_weights", "none"] = "class_weights"
    """Weight each class by n / (classes * count) in the losses, or not."""
    cnn: CnnConfig = CnnConfig()
    trees: int = Field(default=300, ge=1)
    """Trees in each random forest."""
    min_samples_leaf: int = Field(default=1, ge=1)
    threads: int = Field(default=1, ge=1)
    """CPU threads for torch and scikit-learn."""
    gate: PromotionGate = PromotionGate()


@dataclass(frozen=True)
class Split:
    """Indices of the training, validation and test events."""

    train: IntArray
    validation: IntArray
    test: IntArray


def stratified_split(
    fault: IntArray, cavity: IntArray, *, seed: int, validation: float, test: float
) -> Split:
    """A seeded split that keeps each (fault, cavity) share in every part.

    Where some (fault, cavity) pair has too few events to share out, the
    split is stratified by fault type alone.
    """
    index = np.arange(len(fault))
    joint = fault * 16 + cavity
    _, counts = np.unique(joint, return_counts=True)
    key = joint if counts.min() >= 3 else fault
    rest, test_idx = train_test_split(
        index, test_size=test, random_state=seed, stratify=key
    )
    train_idx, val_idx = train_test_split(
        rest,
        test_size=validation / (1.0 - test),
        random_state=seed + 1,
        stratify=key[rest],
    )
    return Split(np.sort(train_idx), np.sort(val_idx), np.sort(test_idx))


@dataclass
class TrainingResult:
    """The fitted models, how they were made and how well they do."""

    cnn: TripCNN
    normalizer: Normalizer
    fault_forest: TreeEnsemble
    cavity_forest: TreeEnsemble
    split: Split
    fault_types: list[str]
    cavity_labels: list[str]
    history: list[dict[str, float]]
    metrics: dict[str, ClassificationReport]
    """``cnn_``, ``trees_`` and ``ensemble_`` (their mean probability) ``fault``
    and ``cavity`` reports on the test set."""
    decision: PromotionDecision
    timings: dict[str, float] = field(default_factory=dict)
    """Training seconds and inference events per second of each model."""

    def save(self, folder: Path) -> None:
        """Write both models, the metrics and the history (no pickle)."""
        meta = {"fault_types": self.fault_types, "cavity_labels": self.cavity_labels}
        save_cnn(self.cnn, self.normalizer, folder, meta)
        self.fault_forest.save(folder / "fault_forest")
        self.cavity_forest.save(folder / "cavity_forest")
        report = {
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "promoted": self.decision.promoted,
            "reasons": self.decision.reasons,
            "history": self.history,
            "timings": self.timings,
        }
        (folder / "metrics.json").write_text(json.dumps(report, indent=2))


def train_trip_classifier(
    ds: xr.Dataset, config: TrainConfig | None = None
) -> TrainingResult:
    """Train and judge both models on a labelled trip dataset."""
    config = config or TrainConfig()
    fault_types, cavity_labels = _categories(ds)
    fault = ds["fault"].values.astype(np.int64)
    cavity = ds["cavity_label"].values.astype(np.int64)
    split = stratified_split(
        fault,
        cavity,
        seed=config.seed,
        validation=config.validation_fraction,
        test=config.test_fraction,
    )

    signals = tuple(str(s) for s in ds["signal"].values)
    normalizer = Normalizer(signals=signals)
    times = ds["time"].values
    x = normalizer(
        ds["waveform"].transpose("sample", "cavity", "signal", "time").values, times
    )
    features = dataset_features(ds)
    names = [str(n) for n in features["feature"].values]

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        begin = time.perf_counter()
        cnn_config = config.cnn.model_copy(
            update={
                "n_signals": len(signals),
                "n_cavities": ds.sizes["cavity"],
                "n_faults": len(fault_types),
            }
        )
        cnn, history = _train_cnn(x, fault, cavity, split, config, cnn_config)
        cnn_seconds = time.perf_counter() - begin

        begin = time.perf_counter()
        fault_forest, cavity_forest = _train_forests(
            features.values,
            names,
            fault,
            cavity,
            split,
            config,
            fault_types,
            cavity_labels,
        )
        tree_seconds = time.perf_counter() - begin

        metrics, rates = _evaluate(
            cnn,
            fault_forest,
            cavity_forest,
            x,
            features.values,
            fault,
            cavity,
            split.test,
            fault_types,
            cavity_labels,
        )
    finally:
        torch.set_num_threads(threads)

    decision = promotion_decision(
        metrics["cnn_fault"], metrics["cnn_cavity"], config.gate
    )
    log.info(
        "trip classifier trained on %s events: fault macro-F1 %.3f (CNN), "
        "%.3f (forest); cavity accuracy %.3f (CNN), %.3f (forest)",
        split.train.size,
        metrics["cnn_fault"].macro_f1,
        metrics["trees_fault"].macro_f1,
        metrics["cnn_cavity"].accuracy,
        metrics["trees_cavity"].accuracy,
    )
    return TrainingResult(
        cnn=cnn,
        normalizer=normalizer,
        fault_forest=fault_forest,
        cavity_forest=cavity_forest,
        split=split,
        fault_types=fault_types,
        cavity_labels=cavity_labels,
        history=history,
        metrics=metrics,
        decision=decision,
        timings={"cnn_train_s": cnn_seconds, "trees_train_s": tree_seconds, **rates},
    )


def _categories(ds: xr.Dataset) -> tuple[list[str], list[str]]:
    for name in ("waveform", "fault", "cavity_label"):
        if name not in ds:
            raise ServiceError(
                f"the training dataset has no {name!r} variable; it needs waveform, "
                "fault and cavity_label as the srf-cavity simulator writes them"
            )
    faults = ds["fault"].attrs.get("categories")
    cavities = ds["cavity_label"].attrs.get("categories")
    if not faults or not cavities:
        raise ServiceError(
            "fault and cavity_label need their 'categories' attributes (the "
            "name of each integer code)"
        )
    return [str(f) for f in faults], [str(c) for c in cavities]


def _class_weights(y: IntArray, n_classes: int, balance: str) -> torch.Tensor:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if balance == "none":
        return torch.ones(n_classes)
    weights = np.where(
        counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 0.0
    )
    return torch.as_tensor(weights, dtype=torch.float32)


def _train_cnn(
    x: FloatArray,
    fault: IntArray,
    cavity: IntArray,
    split: Split,
    config: TrainConfig,
    cnn_config: CnnConfig,
) -> tuple[TripCNN, list[dict[str, float]]]:
    """Adam on the sum of both cross-entropies; keeps the best validation epoch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = TripCNN(cnn_config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    fault_loss = nn.CrossEntropyLoss(
        weight=_class_weights(fault[split.train], cnn_config.n_faults, config.balance)
    )
    cavity_loss = nn.CrossEntropyLoss(
        weight=_class_weights(
            cavity[split.train], cnn_config.n_cavities + 1, config.balance
        )
    )

    data = torch.as_tensor(x, dtype=torch.float32)
    yf = torch.as_tensor(fault)
    yc = torch.as_tensor(cavity)
    best, best_state, stale = np.inf, None, 0
    history: list[dict[str, float]] = []
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(split.train)
        total = 0.0
        for begin in range(0, order.size, config.batch_size):
            batch = torch.as_tensor(order[begin : begin + config.batch_size])
            c, f = model(data[batch])
            loss = cavity_loss(c, yc[batch]) + fault_loss(f, yf[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.numel()
        schedule.step()

        model.eval()
        val = torch.as_tensor(split.validation)
        with torch.no_grad():
            c, f = model(data[val])
            val_loss = float(cavity_loss(c, yc[val]) + fault_loss(f, yf[val]))
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": total / split.train.size,
                    "validation_loss": val_loss,
                    "validation_fault_accuracy": float(
                        (f.argmax(1) == yf[val]).float().mean()
                    ),
                    "validation_cavity_accuracy": float(
                        (c.argmax(1) == yc[val]).float().mean()
                    ),
                }
            )
        log.debug("epoch %s: %s", epoch + 1, history[-1])
        if val_loss < best:
            best, stale = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def _train_forests(
    features: FloatArray,
    names: list[str],
    fault: IntArray,
    cavity: IntArray,
    split: Split,
    config: TrainConfig,
    fault_types: list[str],
    cavity_labels: list[str],
) -> tuple[TreeEnsemble, TreeEnsemble]:
    """One random forest for the fault type, one for the cavity, both exported."""
    forests = []
    for y, classes in ((fault, fault_types), (cavity, cavity_labels)):
        forest = RandomForestClassifier(
            n_estimators=config.trees,
            min_samples_leaf=config.min_samples_leaf,
            class_weight="balanced" if config.balance == "class_weights" else None,
            random_state=config.seed,
            n_jobs=config.threads,
        )
        # The validation set is not needed for early stopping here: use it.
        fit = np.concatenate([split.train, split.validation])
        forest.fit(features[fit], y[fit])
        forests.append(TreeEnsemble.from_sklearn(forest, classes, names))
    return forests[0], forests[1]


def _evaluate(
    cnn: TripCNN,
    fault_forest: TreeEnsemble,
    cavity_forest: TreeEnsemble,
    x: FloatArray,
    features: FloatArray,
    fault: IntArray,
    cavity: IntArray,
    test: IntArray,
    fault_types: list[str],
    cavity_labels: list[str],
) -> tuple[dict[str, ClassificationReport], dict[str, float]]:
    begin = time.perf_counter()
    cavity_prob, fault_prob = predict_cnn(cnn, x[test])
    cnn_rate = test.size / (time.perf_counter() - begin)
    begin = time.perf_counter()
    tree_fault = fault_forest.predict_proba(features[test])
    tree_cavity = cavity_forest.predict_proba(features[test])
    tree_rate = test.size / (time.perf_counter() - begin)

    metrics = {
        "cnn_fault": classification_report(
            fault[test], fault_prob.argmax(1), fault_types
        ),
        "cnn_cavity": classification_report(
            cavity[test], cavity_prob.argmax(1), cavity_labels
        ),
        "trees_fault": classification_report(
            fault[test], tree_fault.argmax(1), fault_types
        ),
        "trees_cavity": classification_report(
            cavity[test], tree_cavity.argmax(1), cavity_labels
        ),
    }
    # The two models together: the mean of their probabilities.
    metrics["ensemble_fault"] = classification_report(
        fault[test], (fault_prob + tree_fault).argmax(1), fault_types
    )
    metrics["ensemble_cavity"] = classification_report(
        cavity[test], (cavity_prob + tree_cavity).argmax(1), cavity_labels
    )
    rates = {"cnn_events_per_s": cnn_rate, "trees_events_per_s": tree_rate}
    return metrics, rates
