"""The trip classifier's library: reading recorded events, features, the CNN
and the exported forest, training, metrics, the promotion gate and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier

from wakefield.errors import EventError, TripDataError
from wakefield.services.simulators.srf import (
    CAVITY_LABELS,
    FAULT_TYPES,
    RECORDED_SIGNALS,
    RecordGrid,
    simulate_trip_dataset,
)
from wakefield.services.trip_classifier.features import (
    FEATURES,
    dataset_features,
    feature_names,
)
from wakefield.services.trip_classifier.metrics import (
    PromotionGate,
    classification_report,
    promotion_decision,
)
from wakefield.services.trip_classifier.models import (
    CnnConfig,
    Normalizer,
    TreeEnsemble,
    TripCNN,
    describe,
    load_cnn,
    predict_cnn,
    save_cnn,
)
from wakefield.services.trip_classifier.plots import (
    plot_confusion,
    plot_feature_importance,
    plot_learning_curves,
)
from wakefield.services.trip_classifier.reader import read_trip_event, to_grid
from wakefield.services.trip_classifier.training import (
    TrainConfig,
    stratified_split,
    train_trip_classifier,
)

SEED = 7
EXAMPLE = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "cebaf-trip-example"
    / "1L25"
    / "2023_02_01"
    / "210026.1"
)
needs_example = pytest.mark.skipif(
    not EXAMPLE.is_dir(),
    reason=f"the real CEBAF trip event is not at {EXAMPLE} (shared/ beside the repo)",
)


@pytest.fixture(scope="module")
def trips():
    """200 simulated trip events, uniform over the fault types."""
    return simulate_trip_dataset(200, seed=SEED)


@pytest.fixture(scope="module")
def trained(trips):
    """Both models trained briefly on the 200 events."""
    return train_trip_classifier(
        trips, TrainConfig(seed=SEED, epochs=6, patience=6, trees=60)
    )


# -- the reader ---------------------------------------------------------------


@needs_example
def test_reads_the_real_example_event():
    """The CEBAF example reads as 8 cavities x 4 signals x 8,192 samples."""
    event = read_trip_event(EXAMPLE)
    assert event["waveform"].shape == (8, 4, 8192)
    t = event["time"].values
    assert t[0] == pytest.approx(-1536.0) and t[-1] == pytest.approx(102.2)
    assert np.allclose(np.diff(t), 0.2, atol=1e-6)
    assert event.attrs["zone"] == "1L25"


@needs_example
def test_real_cavity_6_loses_its_gradient_at_the_trip():
    """In the example, cavity 6's gradient collapses at t = 0; the others hold."""
    gmes = read_trip_event(EXAMPLE)["waveform"].sel(signal="GMES")
    before = gmes.sel(time=slice(-100, -1)).mean("time")
    after = gmes.sel(time=slice(20, 30)).mean("time")
    assert float(before.sel(cavity=6)) > 15.0
    assert float(after.sel(cavity=6)) < 0.1 * float(before.sel(cavity=6))
    others = [c for c in range(1, 9) if c != 6]
    ratio = after.sel(cavity=others) / before.sel(cavity=others)
    assert np.allclose(ratio, 1.0, atol=0.05)
    trace = gmes.sel(cavity=6)
    first_low = float(trace.time[(trace < 0.9 * before.sel(cavity=6)).values][0])
    assert -1.0 <= first_low <= 2.0


@needs_example
def test_real_event_onto_the_classifier_grid():
    """to_grid keeps the classifier's 736 samples (every 4th, and every one
    within 12.8 ms of the trip) with their recorded values; all 17 signals on
    request."""
    event = read_trip_event(EXAMPLE, signals="all")
    assert list(event["signal"].values) == list(RECORDED_SIGNALS)
    grid = RecordGrid()
    gridded = to_grid(event, grid)
    assert gridded["waveform"].shape == (8, 17, 736)
    assert np.array_equal(gridded["time"].values, grid.times)
    near = event["waveform"].sel(time=slice(-12.8, 12.8))
    np.testing.assert_array_equal(
        gridded["waveform"].sel(time=slice(-12.8, 12.8)).values, near.values
    )


def write_event(folder: Path, rows: int = 40, **breaks) -> Path:
    """Eight small recorder files; ``breaks`` spoil one of them."""
    folder.mkdir(parents=True, exist_ok=True)
    for cavity in range(1, 9):
        if cavity == breaks.get("drop_cavity"):
            continue
        t = -4.0 + 0.2 * np.arange(rows + (1 if cavity == breaks.get("longer") else 0))
        if cavity == breaks.get("gap"):
            t[25:] += 0.2
        columns = ["Time"] + [f"R1P{cavity}WFT{s}" for s in RECORDED_SIGNALS]
        if cavity == breaks.get("drop_column"):
            columns.remove(f"R1P{cavity}WFTCRFP")
        lines = ["\t".join(columns)]
        for i, ti in enumerate(t):
            values = [f"{ti:.1f}"] + ["1.5"] * (len(columns) - 1)
            if cavity == breaks.get("text") and i == 10:
                values[3] = "n/a"
            lines.append("\t".join(values))
        name = f"R1P{cavity}WFTharv.2023_02_01_210026.{cavity}.txt"
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_reads_small_written_event(tmp_path):
    """A well-formed event in the recorder's format reads back."""
    event = read_trip_event(write_event(tmp_path / "ok"))
    assert event["waveform"].shape == (8, 4, 40)
    assert float(event["waveform"].max()) == pytest.approx(1.5)


def test_missing_cavity_is_named(tmp_path):
    """A folder without cavity 5's file says that cavity 5 is missing."""
    with pytest.raises(TripDataError, match=r"cavities \[5\]"):
        read_trip_event(write_event(tmp_path / "e", drop_cavity=5))


def test_uneven_spacing_names_file_and_line(tmp_path):
    """A jump in the time column names the file and the line where it is."""
    with pytest.raises(TripDataError, match=r"R1P3WFTharv.*line 27"):
        read_trip_event(write_event(tmp_path / "e", gap=3))


def test_missing_signal_column_is_named(tmp_path):
    """A file without a wanted signal column names that column."""
    with pytest.raises(TripDataError, match="R1P2WFTCRFP"):
        read_trip_event(write_event(tmp_path / "e", drop_column=2))


def test_unequal_time_spans_are_refused(tmp_path):
    """Files of one event with different time axes are an error naming both."""
    with pytest.raises(TripDataError, match="share one time axis"):
        read_trip_event(write_event(tmp_path / "e", longer=8))


def test_text_in_a_number_column_is_located(tmp_path):
    """A value that is not a number is reported with its file, line and column."""
    with pytest.raises(TripDataError, match=r"line 12, column R1P4WFTGMES"):
        read_trip_event(write_event(tmp_path / "e", text=4))


def test_event_outside_the_grid_is_refused(tmp_path):
    """A record too short for the classifier's window cannot be put on its grid."""
    event = read_trip_event(write_event(tmp_path / "e"))
    with pytest.raises(TripDataError, match="grid needs"):
        to_grid(event)


def test_missing_folder_and_unknown_signal(tmp_path):
    """A folder that is not there, or a signal the recorder lacks, is an error."""
    with pytest.raises(TripDataError, match="does not exist"):
        read_trip_event(tmp_path / "nowhere")
    with pytest.raises(TripDataError, match="unknown signals"):
        read_trip_event(write_event(tmp_path / "e"), signals=["GMES", "XYZ"])


# -- features -------------------------------------------------------------------


def test_features_are_named_and_finite(trips):
    """One named, finite column per feature, for every event."""
    features = dataset_features(trips)
    assert features.shape == (200, len(feature_names()))
    assert features.shape[1] == 8 * len(FEATURES) + len(FEATURES) + 2
    assert np.isfinite(features.values).all()


def test_features_see_the_physics(trips):
    """The first cavity to fall decays faster in a fast quench than with RF off."""
    features = dataset_features(trips)
    tau = features.sel(feature="first_gmes_tau_high").values
    fault = trips["fault"].values
    quench = tau[fault == FAULT_TYPES.index("Quench_3ms")]
    rf_off = tau[fault == FAULT_TYPES.index("Single Cav Turn off")]
    assert np.median(quench) < 0.5 * np.median(rf_off)
    dropped = features.sel(feature="zone_n_dropped").values
    multi = fault == FAULT_TYPES.index("Multi Cav turn off")
    assert (dropped[multi] >= 2).all()


def test_features_need_the_four_signals(trips):
    """Features of a dataset without DETA2 are refused, naming it."""
    with pytest.raises(EventError, match="DETA2"):
        dataset_features(trips.sel(signal=["GMES", "GASK", "CRFP"]))


# -- models -----------------------------------------------------------------------


def test_exported_forest_predicts_as_sklearn(tmp_path):
    """The array export of a random forest gives scikit-learn's probabilities."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(300, 6))
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(int) + (x[:, 1] > 1).astype(int)
    forest = RandomForestClassifier(40, random_state=SEED).fit(x, y)
    exported = TreeEnsemble.from_sklearn(forest, ["a", "b", "c"], list("uvwxyz"))
    test = rng.normal(size=(50, 6))
    assert np.allclose(exported.predict_proba(test), forest.predict_proba(test))

    exported.save(tmp_path / "forest")
    loaded = TreeEnsemble.load(tmp_path / "forest")
    assert np.allclose(loaded.predict_proba(test), forest.predict_proba(test))
    assert loaded.classes == ["a", "b", "c"]


def test_forest_attribution_adds_up_to_its_probability():
    """Each event's path contributions plus the base equal the forest's
    probability of the class they explain, and the deciding feature leads."""
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(400, 5))
    y = (x[:, 2] > 0.3).astype(int)
    forest = RandomForestClassifier(30, random_state=SEED).fit(x, y)
    exported = TreeEnsemble.from_sklearn(forest, ["no", "yes"], list("abcde"))
    test = rng.normal(size=(40, 5))
    named = exported.predict_proba(test).argmax(1)
    base, share = exported.contributions(test, named)
    probability = exported.predict_proba(test)[np.arange(40), named]
    np.testing.assert_allclose(base + share.sum(axis=1), probability, atol=1e-12)
    assert (np.abs(share).argmax(axis=1) == 2).mean() > 0.9


def test_cnn_saves_and_loads_without_pickle(tmp_path):
    """A saved CNN reloads from JSON and a weights-only state dict, same outputs."""
    torch.manual_seed(SEED)
    model = TripCNN(CnnConfig()).eval()
    x = torch.randn(3, 8, 4, 640)
    save_cnn(model, Normalizer(), tmp_path, {"fault_types": list(FAULT_TYPES)})
    state = torch.load(tmp_path / "cnn.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    loaded, normalizer, meta = load_cnn(tmp_path)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x), strict=True):
            assert torch.allclose(a, b)
    assert normalizer == Normalizer()
    assert meta["fault_types"] == list(FAULT_TYPES)


def test_cnn_treats_cavities_alike():
    """Swapping two cavities' waveforms swaps their cavity scores."""
    torch.manual_seed(SEED)
    model = TripCNN(CnnConfig()).eval()
    x = torch.randn(2, 8, 4, 640)
    swapped = x[:, [2, 1, 0, 3, 4, 5, 6, 7]]
    with torch.no_grad():
        (c, f), (cs, fs) = model(x), model(swapped)
    assert torch.allclose(c[:, [2, 1, 0, 3, 4, 5, 6, 7, 8]], cs, atol=1e-5)
    assert torch.allclose(f, fs, atol=1e-5)


# -- training -------------------------------------------------------------------


def test_split_is_seeded_stratified_and_disjoint(trips):
    """The same seed gives the same disjoint split, with every fault type in each."""
    fault = trips["fault"].values.astype(np.int64)
    cavity = trips["cavity_label"].values.astype(np.int64)
    a = stratified_split(fault, cavity, seed=1, validation=0.15, test=0.15)
    b = stratified_split(fault, cavity, seed=1, validation=0.15, test=0.15)
    assert all(
        np.array_equal(x, y)
        for x, y in zip(
            (a.train, a.validation, a.test),
            (b.train, b.validation, b.test),
            strict=True,
        )
    )
    parts = np.concatenate([a.train, a.validation, a.test])
    assert np.array_equal(np.sort(parts), np.arange(200))
    for part in (a.train, a.validation, a.test):
        assert set(fault[part]) == set(range(8))


def test_small_training_beats_chance(trained):
    """200 events and a few epochs: both models are far above chance."""
    m = trained.metrics
    assert m["cnn_cavity"].accuracy > 0.5  # chance: 1 / 9
    assert m["trees_cavity"].accuracy > 0.7
    assert m["trees_fault"].macro_f1 > 0.45  # chance: 1 / 8
    assert len(trained.history) >= 2
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]


def test_trained_models_classify_events(trained, trips):
    """Predictions are probabilities and verdicts name a cavity and a fault."""
    x = trained.normalizer(trips["waveform"].values[:5], trips["time"].values)
    cavity_prob, fault_prob = predict_cnn(trained.cnn, x)
    assert np.allclose(cavity_prob.sum(1), 1.0) and np.allclose(fault_prob.sum(1), 1.0)
    verdicts = describe(cavity_prob, fault_prob, list(CAVITY_LABELS), list(FAULT_TYPES))
    assert verdicts[0]["cavity"] in CAVITY_LABELS
    assert 0.0 < verdicts[0]["fault_confidence"] <= 1.0


def test_training_result_saves(trained, tmp_path):
    """Saving writes both models and the metrics, and the CNN reloads."""
    trained.save(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"cnn.pt", "cnn.json", "fault_forest.npz", "metrics.json"} <= names
    model, _, meta = load_cnn(tmp_path)
    assert meta["cavity_labels"] == list(CAVITY_LABELS)


# -- metrics, gate and plots -----------------------------------------------------------


def test_per_class_metrics():
    """Precision, recall, macro-F1 and the confusion of a known example."""
    report = classification_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 2], ["a", "b", "c"])
    assert report.recall == pytest.approx([0.5, 1.0, 1.0])
    assert report.precision == pytest.approx([1.0, 2 / 3, 1.0])
    assert report.confusion == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert report.macro_f1 == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)
    assert report.accuracy == pytest.approx(0.8)


def test_gate_blocks_a_model_blind_to_one_fault():
    """A model whose recall on one fault type is under the floor is not promoted."""
    fault = classification_report([0, 0, 1, 1], [0, 0, 0, 1], ["x", "y"])
    cavity = classification_report([0, 1], [0, 1], ["1", "2"])
    gate = PromotionGate(min_fault_recall=0.6, min_cavity_accuracy=0.9)
    decision = promotion_decision(fault, cavity, gate)
    assert not decision.promoted
    assert "'y'" in decision.reasons[0]
    relaxed = PromotionGate(min_fault_recall=0.6, fault_recall_floors={"y": 0.5})
    assert promotion_decision(fault, cavity, relaxed).promoted


def test_plots_are_written(trained, tmp_path):
    """Confusion, importance and learning-curve plots are written as PNG files."""
    paths = [
        plot_confusion(trained.metrics["cnn_fault"], tmp_path / "c.png", title="f"),
        plot_feature_importance(
            trained.fault_forest.feature_names,
            trained.fault_forest.importances,
            tmp_path / "i.png",
        ),
        plot_learning_curves(trained.history, tmp_path / "l.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
