"""The trip classifier's models: a 1-D CNN on waveforms and a tree ensemble.

:class:`TripCNN` reads the (cavity, signal, time) waveforms of an event.
One encoder, shared by the eight cavities, turns each cavity's signals into
an embedding; each cavity then gets a score for having faulted, compared
with the cryomodule's mean embedding, and a ninth logit stands for
"multiple".  The fault type is read from the embeddings pooled with the
cavity scores as attention, so the fault head looks at the cavity that
faulted.  Sharing the encoder makes the network equivariant to the order of
the cavities: a signature learnt on cavity 3 is recognised on cavity 7.

:class:`TreeEnsemble` is a random forest on the features of
:mod:`.features`, exported from scikit-learn into plain arrays, so that it
is stored and loaded without pickle and predicts with numpy alone.

Both load without executing code from the files: the CNN's weights with
``torch.load(weights_only=True)`` and its architecture from JSON, the
forest from an ``.npz`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import Field
from torch import nn

from wakefield.config import StrictModel
from wakefield.errors import EventError, ServiceError

log = logging.getLogger(__name__)

__all__ = [
    "CnnConfig",
    "Normalizer",
    "TreeEnsemble",
    "TripCNN",
    "cnn_files",
    "cnn_from_files",
    "load_cnn",
    "save_cnn",
]

FloatArray = npt.NDArray[np.float64]


class Normalizer(StrictModel):
    """Scales raw waveforms to what the CNN reads, per cavity and signal.

    Amplitude signals become their departure from the cavity's own
    pre-trip baseline (the median before ``baseline_end``), as a fraction of
    it, so a 20 MV/m and an 8 MV/m cavity look alike; angles are divided by
    ``angle_scale``.  Values are clipped to +-``clip``.
    """

    signals: tuple[str, ...] = ("GMES", "GASK", "CRFP", "DETA2")
    """Signal names, in the order of the waveform's ``signal`` axis."""
    angle_signals: tuple[str, ...] = ("DETA2", "PMES", "PASK")
    """Signals in deg, scaled rather than referred to a baseline."""
    angle_scale: float = 90.0
    """deg that map to 1."""
    baseline_end: float = -100.0
    """End of the baseline window, ms."""
    clip: float = 5.0

    def __call__(
        self, waveform: npt.NDArray[np.floating], times: FloatArray
    ) -> FloatArray:
        """Normalised copy of ``waveform`` (events, cavity, signal, time)."""
        if waveform.shape[2] != len(self.signals):
            raise EventError(
                f"the waveform has {waveform.shape[2]} signals; this model reads "
                f"{len(self.signals)} ({', '.join(self.signals)})"
            )
        x = np.asarray(waveform, dtype=np.float64)
        out = np.empty_like(x)
        base_w = times < self.baseline_end
        for i, name in enumerate(self.signals):
            y = x[:, :, i]
            if name in self.angle_signals:
                out[:, :, i] = y / self.angle_scale
            else:
                base = np.median(y[..., base_w], axis=-1, keepdims=True)
                out[:, :, i] = y / np.maximum(np.abs(base), 1e-6) - 1.0
        return np.clip(out, -self.clip, self.clip)


class CnnConfig(StrictModel):
    """The architecture of :class:`TripCNN`."""

    n_signals: int = Field(default=4, ge=1)
    n_cavities: int = Field(default=8, ge=2)
    n_faults: int = Field(default=8, ge=2)
    channels: tuple[int, ...] = (8, 16, 32, 32)
    """Output channels of the convolution blocks."""
    strides: tuple[int, ...] = (4, 2, 2, 2)
    """Stride of each block: how much it shortens the time axis."""
    kernel: int = Field(default=5, ge=3)
    embedding: int = Field(default=48, ge=8)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)


class TripCNN(nn.Module):
    """Cavity and fault-type logits from normalised waveforms.

    Input shape (batch, cavity, signal, time); outputs the cavity logits
    (batch, cavities + 1; the last is "multiple") and the fault logits
    (batch, faults).
    """

    def __init__(self, config: CnnConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.n_signals
        if len(config.strides) != len(config.channels):
            raise ServiceError(
                f"the CNN has {len(config.channels)} blocks but "
                f"{len(config.strides)} strides; give one stride per block"
            )
        for channels, stride in zip(config.channels, config.strides, strict=True):
            layers += [
                nn.Conv1d(
                    width,
                    channels,
                    config.kernel,
                    stride=stride,
                    padding=config.kernel // 2,
                ),
                nn.BatchNorm1d(channels),
                nn.GELU(),
            ]
            width = channels
        self.encoder = nn.Sequential(*layers)
        e = config.embedding
        self.embed = nn.Sequential(
            nn.Linear(2 * width, e), nn.GELU(), nn.Dropout(config.dropout)
        )
        self.score = nn.Sequential(nn.Linear(2 * e, e), nn.GELU(), nn.Linear(e, 1))
        self.multiple = nn.Sequential(nn.Linear(2 * e, e), nn.GELU(), nn.Linear(e, 1))
        self.fault = nn.Sequential(
            nn.Linear(3 * e, e),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(e, config.n_faults),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, cavities, signals, time = x.shape
        # One encoder for every cavity; pool over time by mean and max.
        h = self.encoder(x.reshape(batch * cavities, signals, time))
        h = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1)
        h = self.embed(h).reshape(batch, cavities, -1)

        # Each cavity against the cryomodule: which one faulted?
        context = h.mean(dim=1, keepdim=True).expand_as(h)
        scores = self.score(torch.cat([h, h - context], dim=-1)).squeeze(-1)
        pooled = torch.cat([h.mean(dim=1), h.amax(dim=1)], dim=-1)
        cavity_logits = torch.cat([scores, self.multiple(pooled)], dim=-1)

        # The fault type, read mostly from the cavities that scored high.
        attention = torch.softmax(scores, dim=-1).unsqueeze(-1)
        focus = (attention * h).sum(dim=1)
        fault_logits = self.fault(torch.cat([focus, pooled], dim=-1))
        return cavity_logits, fault_logits


def cnn_files(
    model: TripCNN, normalizer: Normalizer, meta: dict[str, Any]
) -> dict[str, bytes]:
    """``cnn.json`` (architecture, normalisation, ``meta``) and ``cnn.pt`` as bytes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    spec = {"config": model.config.dump(), "normalizer": normalizer.dump(), **meta}
    return {
        "cnn.json": json.dumps(spec, indent=2).encode(),
        "cnn.pt": buffer.getvalue(),
    }


def cnn_from_files(
    files: dict[str, bytes],
) -> tuple[TripCNN, Normalizer, dict[str, Any]]:
    """The CNN, its normaliser and its metadata from :func:`cnn_files`' bytes.

    The weights are read with ``torch.load(weights_only=True)``: no code in
    them is ever run.
    """
    try:
        spec = json.loads(files["cnn.json"])
        state = torch.load(
            io.BytesIO(files["cnn.pt"]), weights_only=True, map_location="cpu"
        )
        model = TripCNN(CnnConfig.load(spec.pop("config")))
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ServiceError(f"cannot load the trip CNN: {exc}") from exc
    model.eval()
    normalizer = Normalizer.load(spec.pop("normalizer"))
    return model, normalizer, spec


def save_cnn(
    model: TripCNN, normalizer: Normalizer, folder: Path, meta: dict[str, Any]
) -> None:
    """Write ``cnn.json`` (architecture, normalisation, ``meta``) and ``cnn.pt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in cnn_files(model, normalizer, meta).items():
        (folder / name).write_bytes(data)


def load_cnn(folder: Path) -> tuple[TripCNN, Normalizer, dict[str, Any]]:
    """The CNN, its normaliser and its metadata, as :func:`save_cnn` wrote them."""
    try:
        files = {name: (folder / name).read_bytes() for name in ("cnn.json", "cnn.pt")}
    except OSError as exc:
        raise ServiceError(f"cannot load the trip CNN from {folder}: {exc}") from exc
    return cnn_from_files(files)


class TreeEnsemble:
    """A random forest as plain arrays: every tree's nodes, concatenated.

    Node ``i`` of the forest tests ``x[feature[i]] <= threshold[i]`` and goes
    to ``left[i]`` or ``right[i]``; a leaf has ``feature[i] == -1`` and class
    probabilities ``value[i]``.  ``roots`` gives each tree's first node.
    """

    def __init__(
        self,
        *,
        roots: npt.NDArray[np.int64],
        feature: npt.NDArray[np.int64],
        threshold: FloatArray,
        left: npt.NDArray[np.int64],
        right: npt.NDArray[np.int64],
        value: FloatArray,
        classes: list[str],
        feature_names: list[str],
        importances: FloatArray,
    ) -> None:
        self.roots = roots
        self.feature = feature
        self.threshold = threshold
        self.left = left
        self.right = right
        self.value = value
        self.classes = classes
        self.feature_names = feature_names
        self.importances = importances

    @classmethod
    def from_sklearn(
        cls, forest: Any, classes: list[str], feature_names: list[str]
    ) -> TreeEnsemble:
        """Export a fitted ``RandomForestClassifier`` (or ``ExtraTreesClassifier``)."""
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("feature", "threshold", "left", "right", "value")
        }
        roots, offset = [], 0
        n_classes = len(classes)
        for estimator in forest.estimators_:
            tree = estimator.tree_
            leaf = tree.children_left == -1
            roots.append(offset)
            parts["feature"].append(np.where(leaf, -1, tree.feature))
            parts["threshold"].append(tree.threshold)
            parts["left"].append(np.where(leaf, -1, tree.children_left + offset))
            parts["right"].append(np.where(leaf, -1, tree.children_right + offset))
            # Leaf class distribution over all classes, even ones a tree never saw.
            value = np.zeros((tree.node_count, n_classes))
            value[:, forest.classes_.astype(int)] = tree.value[:, 0, :]
            value /= np.maximum(value.sum(axis=1, keepdims=True), 1e-12)
            parts["value"].append(value)
            offset += tree.node_count
        return cls(
            roots=np.array(roots, dtype=np.int64),
            feature=np.concatenate(parts["feature"]).astype(np.int64),
            threshold=np.concatenate(parts["threshold"]).astype(np.float64),
            left=np.concatenate(parts["left"]).astype(np.int64),
            right=np.concatenate(parts["right"]).astype(np.int64),
            value=np.concatenate(parts["value"]),
            classes=classes,
            feature_names=feature_names,
            importances=np.asarray(forest.feature_importances_, dtype=np.float64),
        )

    def predict_proba(self, x: FloatArray) -> FloatArray:
        """Class probabilities, shape (events, classes): the trees' mean."""
        x = self._check(x)
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        rows = np.arange(len(x))[:, None]
        while True:
            feature = self.feature[node]
            inner = feature >= 0
            if not inner.any():
                break
            goes_left = x[rows, np.where(inner, feature, 0)] <= self.threshold[node]
            step = np.where(goes_left, self.left[node], self.right[node])
            node = np.where(inner, step, node)
        return np.asarray(self.value[node].mean(axis=1), dtype=np.float64)

    def contributions(
        self, x: FloatArray, target: npt.NDArray[np.int64]
    ) -> tuple[FloatArray, FloatArray]:
        """Each feature's share of the probability of class ``target[i]``.

        Along every tree's path, each split moves the probability of the
        target class from the parent node's value to the child's; the move
        is credited to the feature the split tests.  Averaged over the
        trees, the base (the root's value) plus the contributions is exactly
        :meth:`predict_proba`'s probability of that class (Saabas's
        decomposition of a forest).  Returns (base (events,), contributions
        (events, features)).
        """
        x = self._check(x)
        target = np.asarray(target, dtype=np.int64)[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        rows = np.broadcast_to(np.arange(len(x))[:, None], node.shape)
        base = self.value[node, target].mean(axis=1)
        share = np.zeros((len(x), len(self.feature_names)))
        while True:
            feature = self.feature[node]
            inner = feature >= 0
            if not inner.any():
                break
            tested = np.where(inner, feature, 0)
            goes_left = x[rows, tested] <= self.threshold[node]
            step = np.where(goes_left, self.left[node], self.right[node])
            child = np.where(inner, step, node)
            moved = self.value[child, target] - self.value[node, target]
            np.add.at(share, (rows[inner], tested[inner]), moved[inner])
            node = child
        return np.asarray(base, dtype=np.float64), share / len(self.roots)

    def _check(self, x: FloatArray) -> FloatArray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise EventError(
                f"features have shape {x.shape}; this forest reads "
                f"(events, {len(self.feature_names)})"
            )
        return x

    def to_files(self, name: str) -> dict[str, bytes]:
        """The arrays as ``<name>.npz`` and the names as ``<name>.json``, in bytes."""
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            roots=self.roots,
            feature=self.feature,
            threshold=self.threshold,
            left=self.left,
            right=self.right,
            value=self.value,
            importances=self.importances,
        )
        names = {"classes": self.classes, "feature_names": self.feature_names}
        return {
            f"{name}.npz": buffer.getvalue(),
            f"{name}.json": json.dumps(names, indent=2).encode(),
        }

    @classmethod
    def from_files(cls, files: dict[str, bytes], name: str) -> TreeEnsemble:
        """Read what :meth:`to_files` wrote; no pickle is ever loaded."""
        try:
            names = json.loads(files[f"{name}.json"])
            with np.load(io.BytesIO(files[f"{name}.npz"]), allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (KeyError, OSError, ValueError) as exc:
            raise ServiceError(f"cannot load the tree ensemble {name}: {exc}") from exc
        return cls(
            **data, classes=names["classes"], feature_names=names["feature_names"]
        )

    def save(self, path: Path) -> None:
        """Write the arrays to ``<path>.npz`` and the names to ``<path>.json``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, data in self.to_files(path.name).items():
            (path.parent / name).write_bytes(data)

    @classmethod
    def load(cls, path: Path) -> TreeEnsemble:
        """Read what :meth:`save` wrote; no pickle is ever loaded."""
        try:
            files = {
                f"{path.name}{suffix}": path.with_suffix(suffix).read_bytes()
                for suffix in (".json", ".npz")
            }
        except OSError as exc:
            raise ServiceError(f"cannot load the tree ensemble {path}: {exc}") from exc
        return cls.from_files(files, path.name)


def predict_cnn(
    model: TripCNN, x: FloatArray, *, batch_size: int = 256
) -> tuple[FloatArray, FloatArray]:
    """Cavity and fault probabilities for normalised waveforms."""
    model.eval()
    cavity, fault = [], []
    with torch.no_grad():
        for begin in range(0, len(x), batch_size):
            chunk = torch.as_tensor(x[begin : begin + batch_size], dtype=torch.float32)
            c, f = model(chunk)
            cavity.append(torch.softmax(c, dim=-1).numpy())
            fault.append(torch.softmax(f, dim=-1).numpy())
    return (
        np.concatenate(cavity).astype(np.float64),
        np.concatenate(fault).astype(np.float64),
    )


def describe(
    cavity_prob: FloatArray,
    fault_prob: FloatArray,
    cavity_labels: list[str],
    fault_types: list[str],
) -> list[dict[str, Any]]:
    """One verdict per event: the likeliest cavity and fault, with confidences."""
    verdicts = []
    for pc, pf in zip(cavity_prob, fault_prob, strict=True):
        verdicts.append(
            {
                "cavity": cavity_labels[int(pc.argmax())],
                "cavity_confidence": float(pc.max()),
                "fault": fault_types[int(pf.argmax())],
                "fault_confidence": float(pf.max()),
                "cavity_probabilities": dict(
                    zip(cavity_labels, map(float, pc), strict=True)
                ),
                "fault_probabilities": dict(
                    zip(fault_types, map(float, pf), strict=True)
                ),
            }
        )
    return verdicts
