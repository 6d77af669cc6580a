"""Training the trip classifier: seeded stratified splits, the CNN and the forest.

:func:`train_trip_classifier` takes a labelled dataset as the
``srf-cavity`` simulator writes it (``waveform`` with dims sample, cavity,
signal, time; ``fault`` and ``cavity_label`` as integer codes with their
``categories``), splits it into train, validation and test sets stratified
by fault type and cavity, trains both models with class weights against
imbalance (the CNN with early stopping on the validation loss), measures
them on the test set and decides whether the served model may be promoted.

The served model combines the two: a weighted mean of the CNN's and the
forest's class probabilities, the weight chosen on the validation events
(the CNN's predictions there, and the forest's out-of-bag predictions, as
the forest is fitted on them) to minimise the log loss.  Samples that a
simulation flagged (``status`` not 0) are left out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
from .models import CnnConfig, Normalizer, TreeEnsemble, TripCNN, predict_cnn
from .serving import TripModel

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

OnEpoch = Callable[[int, int, dict[str, float]], None]
"""Called after each CNN epoch with (epoch, most epochs, that epoch's history)."""


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
    noise: float = Field(default=0.02, ge=0.0, le=1.0)
    """Standard deviation of Gaussian noise added to the CNN's normalised
    training inputs each batch (a fraction of the baseline; angles / 90 deg)."""
    weight_decay: float = Field(default=1e-3, ge=0.0)
    balance: Literal["class_weights", "none"] = "class_weights"
    """Weight each class by n / (classes * count) in the losses, or not."""
    cnn: CnnConfig = CnnConfig()
    trees: int = Field(default=300, ge=1)
    """Trees in each random forest."""
    min_samples_leaf: int = Field(default=1, ge=1)
    threads: int = Field(default=1, ge=1)
    """CPU threads for torch and scikit-learn."""
    serve: Literal["ensemble", "cnn", "trees"] = "ensemble"
    """What is served and judged by the gate: both models combined, or one."""
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
    """``cnn_``, ``trees_`` and ``ensemble_`` (the weighted combination)
    ``fault`` and ``cavity`` reports on the test set."""
    decision: PromotionDecision
    times: FloatArray
    """The time grid the models read, ms."""
    signals: tuple[str, ...]
    weights: dict[str, float]
    """The CNN's weight in the served probabilities, per task (``fault``,
    ``cavity``); 1 serves the CNN alone, 0 the forest alone."""
    served: str = "ensemble"
    timings: dict[str, float] = field(default_factory=dict)
    """Training seconds and inference events per second of each model."""

    def model(self, info: dict[str, Any] | None = None) -> TripModel:
        """The served model, ready to classify or to be published."""
        return TripModel(
            cnn=self.cnn,
            normalizer=self.normalizer,
            fault_forest=self.fault_forest,
            cavity_forest=self.cavity_forest,
            fault_types=self.fault_types,
            cavity_labels=self.cavity_labels,
            times=self.times,
            signals=self.signals,
            weights=self.weights,
            info={**self.summary(), **(info or {})},
        )

    def summary(self) -> dict[str, Any]:
        """The served model's headline figures on the test set."""
        fault = self.metrics[f"{self.served}_fault"]
        cavity = self.metrics[f"{self.served}_cavity"]
        return {
            "served": self.served,
            "promoted": self.decision.promoted,
            "reasons": self.decision.reasons,
            "fault_macro_f1": fault.macro_f1,
            "fault_recall": fault.recall_of(),
            "cavity_accuracy": cavity.accuracy,
            "test_events": int(self.split.test.size),
        }

    def report(self) -> dict[str, Any]:
        """Metrics, the decision, the learning curve and timings, as JSON data."""
        return {
            "served": self.served,
            "weights": self.weights,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "promoted": self.decision.promoted,
            "reasons": self.decision.reasons,
            "history": self.history,
            "timings": self.timings,
            "split": {
                "train": int(self.split.train.size),
                "validation": int(self.split.validation.size),
                "test": int(self.split.test.size),
            },
        }

    def files(self) -> dict[str, bytes]:
        """The served model's files and ``metrics.json`` (no pickle)."""
        return {
            **self.model().to_files(),
            "metrics.json": json.dumps(self.report(), indent=2).encode(),
        }

    def save(self, folder: Path) -> None:
        """Write both models, the metrics and the history (no pickle)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files().items():
            (folder / name).write_bytes(data)


def train_trip_classifier(
    ds: xr.Dataset,
    config: TrainConfig | None = None,
    *,
    on_epoch: OnEpoch | None = None,
) -> TrainingResult:
    """Train and judge both models on a labelled trip dataset."""
    config = config or TrainConfig()
    ds = _usable(ds)
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
    times = np.asarray(ds["time"].values, dtype=np.float64)
    waveform = ds["waveform"].transpose("sample", "cavity", "signal", "time").values
    x = normalizer(waveform, times)
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
        cnn, history = _train_cnn(x, fault, cavity, split, config, cnn_config, on_epoch)
        cnn_seconds = time.perf_counter() - begin

        begin = time.perf_counter()
        forests, out_of_bag = _train_forests(
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

        weights = _combination(cnn, x, out_of_bag, fault, cavity, split, config)
        metrics, rates = _evaluate(
            cnn,
            forests,
            weights,
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
        metrics[f"{config.serve}_fault"], metrics[f"{config.serve}_cavity"], config.gate
    )
    log.info(
        "trip classifier trained on %s events: fault macro-F1 %.3f (CNN), "
        "%.3f (forest), %.3f (served %s, CNN weight %.2f); cavity accuracy %.3f "
        "(served)",
        split.train.size,
        metrics["cnn_fault"].macro_f1,
        metrics["trees_fault"].macro_f1,
        metrics[f"{config.serve}_fault"].macro_f1,
        config.serve,
        weights["fault"],
        metrics[f"{config.serve}_cavity"].accuracy,
    )
    return TrainingResult(
        cnn=cnn,
        normalizer=normalizer,
        fault_forest=forests[0],
        cavity_forest=forests[1],
        split=split,
        fault_types=fault_types,
        cavity_labels=cavity_labels,
        history=history,
        metrics=metrics,
        decision=decision,
        times=times,
        signals=signals,
        weights=weights,
        served=config.serve,
        timings={"cnn_train_s": cnn_seconds, "trees_train_s": tree_seconds, **rates},
    )


def _usable(ds: xr.Dataset) -> xr.Dataset:
    """The samples a simulation did not flag."""
    if "status" not in ds or "sample" not in ds["status"].dims:
        return ds
    good = np.asarray(ds["status"].values) == 0
    if not good.all():
        log.warning("leaving out %s flagged samples of %s", (~good).sum(), good.size)
    if good.sum() < 20:
        raise ServiceError(
            f"the training dataset has {int(good.sum())} usable samples of "
            f"{good.size} (the others are flagged failed); at least 20 are needed"
        )
    return ds.isel(sample=np.flatnonzero(good))


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
    on_epoch: OnEpoch | None = None,
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
            inputs = data[batch]
            if config.noise:
                inputs = inputs + config.noise * torch.randn_like(inputs)
            c, f = model(inputs)
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
        if on_epoch is not None:
            on_epoch(epoch + 1, config.epochs, history[-1])
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
) -> tuple[tuple[TreeEnsemble, TreeEnsemble], tuple[FloatArray, FloatArray]]:
    """One random forest for the fault type, one for the cavity, both exported;
    and their out-of-bag probabilities on the validation events."""
    forests, out_of_bag = [], []
    # The validation set is not needed for early stopping here: use it.
    fit = np.concatenate([split.train, split.validation])
    for y, classes in ((fault, fault_types), (cavity, cavity_labels)):
        forest = RandomForestClassifier(
            n_estimators=config.trees,
            min_samples_leaf=config.min_samples_leaf,
            class_weight="balanced" if config.balance == "class_weights" else None,
            random_state=config.seed,
            n_jobs=config.threads,
            oob_score=True,
        )
        forest.fit(features[fit], y[fit])
        forests.append(TreeEnsemble.from_sklearn(forest, classes, names))
        # Out-of-bag: each event judged by the trees that did not see it.
        oob = np.zeros((fit.size, len(classes)))
        oob[:, forest.classes_.astype(int)] = np.nan_to_num(
            forest.oob_decision_function_, nan=1.0 / forest.classes_.size
        )
        out_of_bag.append(oob[split.train.size :])
    return (forests[0], forests[1]), (out_of_bag[0], out_of_bag[1])


def _combination(
    cnn: TripCNN,
    x: FloatArray,
    out_of_bag: tuple[FloatArray, FloatArray],
    fault: IntArray,
    cavity: IntArray,
    split: Split,
    config: TrainConfig,
) -> dict[str, float]:
    """The CNN's weight for each task, chosen on the validation events.

    The weight with the best validation macro-F1 wins; among equals, the
    one with the lower log loss.  The CNN is prone to be confidently wrong
    where the forest is not, which the log loss alone would not weigh.
    """
    if config.serve != "ensemble":
        weight = 1.0 if config.serve == "cnn" else 0.0
        return {"fault": weight, "cavity": weight}
    cavity_prob, fault_prob = predict_cnn(cnn, x[split.validation])
    grid = np.linspace(0.0, 1.0, 21)
    weights = {}
    for task, cnn_p, tree_p, y in (
        ("fault", fault_prob, out_of_bag[0], fault[split.validation]),
        ("cavity", cavity_prob, out_of_bag[1], cavity[split.validation]),
    ):
        rows = np.arange(y.size)
        labels = [str(c) for c in range(cnn_p.shape[1])]
        scores = []
        for w in grid:
            mixed = w * cnn_p + (1 - w) * tree_p
            f1 = classification_report(y, mixed.argmax(1), labels).macro_f1
            loss = -np.log(np.maximum(mixed[rows, y], 1e-6)).mean()
            scores.append((round(f1, 6), -loss))
        weights[task] = float(grid[max(range(grid.size), key=scores.__getitem__)])
    log.info("CNN weights in the served probabilities: %s", weights)
    return weights


def _evaluate(
    cnn: TripCNN,
    forests: tuple[TreeEnsemble, TreeEnsemble],
    weights: dict[str, float],
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
    tree_fault = forests[0].predict_proba(features[test])
    tree_cavity = forests[1].predict_proba(features[test])
    tree_rate = test.size / (time.perf_counter() - begin)

    wf, wc = weights["fault"], weights["cavity"]
    probabilities = {
        "cnn": (fault_prob, cavity_prob),
        "trees": (tree_fault, tree_cavity),
        "ensemble": (
            wf * fault_prob + (1 - wf) * tree_fault,
            wc * cavity_prob + (1 - wc) * tree_cavity,
        ),
    }
    metrics = {}
    for name, (pf, pc) in probabilities.items():
        metrics[f"{name}_fault"] = classification_report(
            fault[test], pf.argmax(1), fault_types
        )
        metrics[f"{name}_cavity"] = classification_report(
            cavity[test], pc.argmax(1), cavity_labels
        )
    rates = {"cnn_events_per_s": cnn_rate, "trees_events_per_s": tree_rate}
    return metrics, rates
