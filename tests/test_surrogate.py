"""The surrogate's training, artifact and predictions, on scans of the
closed-form Analytic simulator (fast, no Ray)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from wakefield.datastore import Datastore
from wakefield.errors import ExtrapolationWarning, SpecError
from wakefield.services.surrogate import (
    ExtrapolationError,
    RequestError,
    SurrogateModel,
    TrainConfig,
    train,
)
from wakefield.services.surrogate.data import good_samples, select_variables, split
from wakefield.services.surrogate.serving import parse_request, respond
from wakefield.testing import Analytic

SEED = 20261203
FAST = {
    "network": {"hidden": [32, 32]},
    "optimizer": {"name": "adam", "lr": 0.005},
    "training": {"epochs": 8, "batch_size": 32, "patience": None},
    "uncertainty": {"method": "ensemble", "members": 2},
}


def analytic_scan(
    n: int = 300,
    seed: int = SEED,
    *,
    fail_above: float | None = None,
    out_of_range: str = "error",
) -> xr.Dataset:
    """A scan laid out as the simulation kind writes one: settings x, z;
    outputs y and the 8x8 image spot; per-sample status."""
    sim = Analytic(Analytic.Options(fail_above=fail_above))
    rng = np.random.default_rng(seed)
    settings = [
        s.model_copy(update={"out_of_range": out_of_range}) for s in sim.settings()
    ]
    values = {s.name: rng.uniform(s.low, s.high, n) for s in settings}
    batch = sim.simulate(values, rng)
    status = np.zeros(n, dtype=np.int8)
    status[list(batch.failures)] = 1
    data: dict[str, Any] = {"status": ("sample", status)}
    for s in settings:
        attrs = {
            "units": s.unit,
            "role": "setting",
            "valid_range": list(s.range),
            "default": s.default,
        }
        data[s.name] = ("sample", values[s.name], attrs)
    for o in sim.outputs():
        attrs = {"units": o.unit, "role": "output", "long_name": o.description}
        data[o.name] = (("sample", *o.dims), batch.outputs[o.name], attrs)
    coords = {k: (k, c.values, {"units": c.unit}) for k, c in sim.coordinates().items()}
    return xr.Dataset(
        data, coords=coords, attrs={"settings": [s.dump() for s in settings]}
    )


def config(**changes: Any) -> dict[str, Any]:
    merged = json.loads(json.dumps(FAST))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="module")
def trained() -> tuple[SurrogateModel, Any]:
    """One small ensemble with an image head, shared by the tests that only read it."""
    return train(analytic_scan(), config(image="spot"))


def test_training_reaches_a_small_error_on_y() -> None:
    """A few hundred samples of y = x^2 + z give a test MAE under 1.5 % of y's
    range and R^2 above 0.99."""
    ds = analytic_scan(500)
    model, metrics = train(
        ds,
        config(
            training={"epochs": 150, "patience": 30},
            uncertainty={"method": "none"},
        ),
    )
    error = metrics.outputs["y"]
    assert error.mae_percent < 1.5, metrics.summary()
    assert error.r2 > 0.99
    assert metrics.samples == {"train": 350, "validation": 75, "test": 75}
    assert len(metrics.curves[0].train) == len(metrics.curves[0].validation) > 0
    assert metrics.curves[0].validation[-1] < metrics.curves[0].validation[0]


def test_split_and_metrics_are_seeded() -> None:
    """The same seed gives the same split and the same metrics; another seed
    gives another split."""
    ds = analytic_scan(200)
    first = train(ds, config())[1]
    second = train(ds, config())[1]
    assert first.to_dict()["outputs"] == second.to_dict()["outputs"]
    assert first.curves[0].train == second.curves[0].train
    np.testing.assert_array_equal(
        split(200, (0.7, 0.15, 0.15), 4)[2], split(200, (0.7, 0.15, 0.15), 4)[2]
    )
    assert not np.array_equal(
        split(200, (0.7, 0.15, 0.15), 4)[2], split(200, (0.7, 0.15, 0.15), 5)[2]
    )
    third = train(ds, config(training={"seed": 1}))[1]
    assert third.to_dict()["outputs"] != first.to_dict()["outputs"]


def test_flagged_samples_are_left_out() -> None:
    """Samples with a status other than 0 never reach training, even when their
    outputs hold wild values."""
    ds = analytic_scan(300, fail_above=0.5)
    bad = ds.status.values != 0
    ds["y"].values[bad] = 1e6
    variables = select_variables(ds, TrainConfig.load({}))
    samples = good_samples(ds, variables)
    assert len(samples) == int((~bad).sum()) and samples.y.max() < 10
    model, metrics = train(ds, config())
    assert sum(metrics.samples.values()) == int((~bad).sum())
    assert model.normalisation.output_high[0] < 10


@pytest.mark.parametrize(
    ("method", "head"), [("ensemble", "deconv"), ("mc_dropout", "pca")]
)
def test_artifact_reloaded_in_another_process_predicts_the_same(
    tmp_path: Path, method: str, head: str
) -> None:
    """A saved model, loaded in a new Python process, gives the trained model's
    means and standard deviations (scalars and image) to 1e-6."""
    dropout = 0.1 if method == "mc_dropout" else 0.0
    model, _ = train(
        analytic_scan(200),
        config(
            image="spot",
            network={"dropout": dropout, "image_head": head, "image_components": 12},
            uncertainty={"method": method, "members": 2, "samples": 8},
        ),
    )
    store = Datastore(tmp_path / "data")
    ref = model.save(store, "models/analytic")
    x = {"x": [-0.9, -0.2, 0.4, 0.95], "z": [0.1, 1.0, 1.7, 1.99]}
    here = model.predict(x)

    script = textwrap.dedent(f"""
        import json
        from wakefield.datastore import Datastore
        from wakefield.events import DataRef
        from wakefield.services.surrogate import SurrogateModel
        store = Datastore({str(tmp_path / "data")!r})
        model = SurrogateModel.load(store, DataRef.load({ref.dump()!r}))
        p = model.predict({x!r})
        print(json.dumps({{"mean": p.mean["y"].tolist(), "std": p.std["y"].tolist(),
                           "image": p.image.tolist()}}))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    there = json.loads(done.stdout.splitlines()[-1])
    np.testing.assert_allclose(there["mean"], here.mean["y"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(there["std"], here.std["y"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(there["image"], here.image, rtol=1e-6, atol=1e-9)
    assert (here.std["y"] > 0).all()


@pytest.mark.parametrize("head", ["pca", "deconv"])
def test_image_heads_learn_the_spot(head: str) -> None:
    """Both image heads learn the Gaussian spot: pixel R^2 above 0.9 on the
    test samples, and the scalar y alongside it."""
    model, metrics = train(
        analytic_scan(400),
        config(
            image="spot",
            network={"image_head": head, "image_components": 32, "hidden": [64, 64]},
            training={"epochs": 120, "patience": 20},
            uncertainty={"method": "none"},
        ),
    )
    assert metrics.image is not None and metrics.image.r2 > 0.9, metrics.image
    assert metrics.outputs["y"].r2 > 0.95
    assert model.predict({"x": 0.0, "z": 1.0}).image.shape == (1, 8, 8)


def test_artifact_holds_variables_normalisation_metrics_and_dataset(
    tmp_path: Path, trained: tuple[SurrogateModel, Any]
) -> None:
    """model.json carries units, ranges, normalisation, metrics and the
    dataset reference; weights.pt loads with weights_only."""
    from wakefield.events import DataRef

    model, _ = trained
    store = Datastore(tmp_path)
    model.dataset = DataRef(uri="runs/r/scan.zarr", hash="sha256:" + "0" * 64)
    ref = model.save(store, "models/m")
    description = json.loads(store.read_artifact(ref, "model.json"))
    assert description["format"] == "wakefield.surrogate/1"
    assert description["settings"][0] == {**model.settings[0].dump()}
    assert description["settings"][0]["unit"] == "m"
    assert description["settings"][0]["range"] == [-1.0, 1.0]
    assert description["outputs"][0]["unit"] == "m^2"
    assert description["image"]["shape"] == [8, 8]
    assert len(description["normalisation"]["output_low"]) == 1
    assert description["dataset"]["uri"] == "runs/r/scan.zarr"
    assert description["metrics"]["mae_percent"]["y"] > 0
    import io

    state = torch.load(
        io.BytesIO(store.read_artifact(ref, "weights.pt")), weights_only=True
    )
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert store.artifact_meta(ref)["outputs"] == ["y"]


def test_torch_forward_matches_predict_and_has_gradients(
    trained: tuple[SurrogateModel, Any],
) -> None:
    """torch_forward gives predict's mean in physical units, and autograd
    gradients agree with finite differences."""
    model, _ = trained
    x = torch.tensor([[0.3, 1.2], [-0.5, 0.4]], dtype=torch.float64, requires_grad=True)
    y = model.torch_forward(x)
    np.testing.assert_allclose(
        y.detach().numpy()[:, 0], model.predict(x.detach().numpy()).mean["y"], rtol=1e-5
    )
    (grad,) = torch.autograd.grad(y.sum(), x)
    step = 1e-4
    for j in range(2):
        shift = torch.zeros_like(x)
        shift[:, j] = step
        with torch.no_grad():
            numeric = (
                model.torch_forward(x + shift) - model.torch_forward(x - shift)
            ) / (2 * step)
        np.testing.assert_allclose(
            grad[:, j].numpy(), numeric[:, 0].numpy(), rtol=1e-3, atol=1e-4
        )
    single = model.torch_forward(torch.tensor([0.3, 1.2], dtype=torch.float64))
    assert single.shape == (1,)


def test_scaling_round_trips_and_spans_minus_one_to_one(
    trained: tuple[SurrogateModel, Any],
) -> None:
    """Settings' ranges map onto [-1, 1]; outputs scale and unscale back."""
    model, _ = trained
    corners = np.array([[-1.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(model.scale_inputs(corners), [[-1, -1], [1, 1]])
    np.testing.assert_allclose(
        model.unscale_inputs(model.scale_inputs(corners)), corners
    )
    y = np.array([[0.5], [2.5]])
    np.testing.assert_allclose(model.unscale_outputs(model.scale_outputs(y)), y)


def test_transforms_learn_peaked_outputs_and_round_trip() -> None:
    """log and asinh transforms invert exactly and still give predictions in
    the output's unit."""
    ds = analytic_scan(200)
    ds["y"] = ds["y"].copy(data=np.exp(4 * ds["y"].values))
    model, metrics = train(ds, config(transforms={"y": "log"}))
    assert model.normalisation.transforms == ("log",)
    y = ds["y"].values[:10, None]
    np.testing.assert_allclose(
        model.unscale_outputs(model.scale_outputs(y)), y, rtol=1e-12
    )
    assert (model.predict(ds[["x", "z"]].to_array().T.values[:10]).mean["y"] > 0).all()

    signed = analytic_scan(200)
    signed["y"] = signed["y"].copy(data=np.sinh(3 * signed["x"].values) * 50)
    model, _ = train(signed, config(transforms={"y": "asinh"}))
    y = signed["y"].values[:10, None]
    np.testing.assert_allclose(
        model.unscale_outputs(model.scale_outputs(y)), y, rtol=1e-12
    )
    with pytest.raises(SpecError, match="values <= 0"):
        train(signed, config(transforms={"y": "log"}))


@pytest.mark.parametrize("policy", ["error", "warn", "clip"])
def test_out_of_range_settings_follow_the_policy(
    trained: tuple[SurrogateModel, Any], policy: str
) -> None:
    """Outside the training range: error refuses, warn predicts there with an
    ExtrapolationWarning, clip predicts at the edge; each flags the sample."""
    model, _ = trained
    x = {"x": [0.0, 1.5], "z": [1.0, 1.0]}
    if policy == "error":
        with pytest.raises(ExtrapolationError, match=r"x = 1\.5 m in sample 1") as info:
            model.predict(x, policy={"x": "error"})
        assert info.value.flagged == [{"sample": 1, "settings": ["x"]}]
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = model.predict(x, policy={"x": policy})
    assert p.out_of_range.tolist() == [[False, False], [True, False]]
    assert p.flagged() == [{"sample": 1, "settings": ["x"]}]
    assert p.actions == {"x": policy}
    edge = model.predict({"x": [1.0], "z": [1.0]}).mean["y"][0]
    if policy == "warn":
        assert any(issubclass(w.category, ExtrapolationWarning) for w in caught)
        assert p.x[1, 0] == 1.5 and p.mean["y"][1] != edge
    else:
        assert not caught
        assert p.x[1, 0] == 1.0 and p.mean["y"][1] == pytest.approx(edge, rel=1e-6)


def test_default_policy_comes_from_the_setting() -> None:
    """Without an override, a setting's own out_of_range decides."""
    model, _ = train(analytic_scan(120, out_of_range="clip"), config())
    assert [s.out_of_range for s in model.settings] == ["clip", "clip"]
    assert model.predict({"x": 3.0, "z": 1.0}).x[0, 0] == 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"settings": {"x": [0.1]}}, r"missing \['z'\]"),
        ({"settings": {"x": [0.1], "z": [1.0], "w": [2]}}, r"unknown \['w'\]"),
        ({"settings": {"x": [[0.1, 0.2]], "z": [1.0]}}, r"x must be a number or a 1-D"),
        (
            {"settings": {"x": [0.1, 0.2], "z": [1.0, 1.1, 1.2]}},
            "same number of values",
        ),
        ({"settings": {"x": "a lot", "z": 1.0}}, "x must be a number or a list"),
        ({"settings": {"x": float("nan"), "z": 1.0}}, "x is nan in sample 0"),
        ({"settings": 3}, "settings must be an object"),
        ({"settings": [{"x": 0.1, "z": 1.0}, {"x": 0.2}]}, "record 1"),
        ({"settings": {"x": [], "z": []}}, "no samples"),
        ("predict please", "must be an object"),
        ({"settings": {"x": 0.1, "z": 1.0}, "sample": 3}, "Extra inputs"),
    ],
)
def test_bad_requests_say_what_is_wrong(
    trained: tuple[SurrogateModel, Any], tmp_path: Path, data: Any, message: str
) -> None:
    """Missing or unknown settings, wrong shapes and malformed data raise a
    RequestError that names the problem."""
    model, _ = trained
    with pytest.raises(RequestError, match=message):
        respond(
            model,
            parse_request(data),
            policy={},
            max_samples=100,
            inline=1000,
            store=Datastore(tmp_path),
            uri="p.zarr",
        )


def test_responses_carry_scalars_inline_and_images_by_reference(
    trained: tuple[SurrogateModel, Any], tmp_path: Path
) -> None:
    """A response holds means, standard deviations and units inline and the
    image in a dataset it refers to; records and columns give the same answer."""
    model, _ = trained
    store = Datastore(tmp_path)
    columns = parse_request({"settings": {"x": [0.1, 0.2], "z": 1.0}})
    records = parse_request([{"x": 0.1, "z": 1.0}, {"x": 0.2, "z": 1.0}])
    data, ref = respond(
        model,
        columns,
        policy={},
        max_samples=10,
        inline=1000,
        store=store,
        uri="a.zarr",
    )
    again, _ = respond(
        model,
        records,
        policy={},
        max_samples=10,
        inline=1000,
        store=store,
        uri="b.zarr",
    )
    assert data["outputs"] == again["outputs"]
    assert (
        data["outputs"]["y"]["unit"] == "m^2" and len(data["outputs"]["y"]["std"]) == 2
    )
    assert ref is not None
    ds = store.open_dataset(ref)
    assert ds["spot"].shape == (2, 8, 8) and ds["spot_std"].shape == (2, 8, 8)
    np.testing.assert_allclose(ds["y"].values, data["outputs"]["y"]["mean"])
    with pytest.raises(RequestError, match="at most 1 per request"):
        respond(
            model,
            columns,
            policy={},
            max_samples=1,
            inline=1000,
            store=store,
            uri="c.zarr",
        )
    big, big_ref = respond(
        model, columns, policy={}, max_samples=10, inline=2, store=store, uri="d.zarr"
    )
    assert big["outputs"] is None and big_ref is not None


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "momentum": 0.9, "nesterov": True},
        {"name": "sgd", "momentum": 0.5},
        {"name": "adagrad"},
        {"name": "adadelta"},
        {"name": "rmsprop"},
        {"name": "adam"},
        {"name": "nadam"},
        {"name": "lbfgs", "max_iter": 5},
    ],
    ids=lambda o: o["name"] + ("-nesterov" if o.get("nesterov") else ""),
)
def test_every_optimizer_lowers_the_loss(optimizer: dict[str, Any]) -> None:
    """Each optimizer trains: the validation loss ends below where it started."""
    batch = 256 if optimizer["name"] == "lbfgs" else 32
    _, metrics = train(
        analytic_scan(150),
        config(
            optimizer=optimizer,
            training={"epochs": 6, "batch_size": batch},
            uncertainty={"method": "none"},
        ),
    )
    curve = metrics.curves[0]
    assert all(np.isfinite(curve.train)) and min(curve.validation) < curve.validation[0]


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "exponential", "gamma": 0.5},
        {"name": "step", "step": 2, "gamma": 0.1},
        {"name": "cosine", "min_lr": 0.0},
        {"name": "plateau", "patience": 1},
    ],
    ids=lambda s: s["name"],
)
def test_learning_rate_schedules_decay(schedule: dict[str, Any]) -> None:
    """Each schedule lowers the learning rate over the epochs."""
    rates: list[float] = []
    train(
        analytic_scan(100),
        config(
            schedule=schedule,
            optimizer={"name": "sgd", "lr": 0.01},
            training={"epochs": 6},
            uncertainty={"method": "none"},
        ),
        on_epoch=lambda r: rates.append(r.lr),
    )
    assert rates[0] == 0.01 and rates[-1] < rates[0]


@pytest.mark.parametrize(
    "activation", ["tanh", "relu", "leaky_relu", "prelu", "elu", "sigmoid", "silu"]
)
@pytest.mark.parametrize("init", ["xavier_normal", "kaiming_uniform", "orthogonal"])
def test_activations_and_initialisations_build_and_train(
    activation: str, init: str
) -> None:
    """Every activation with each initialisation family trains without NaN."""
    _, metrics = train(
        analytic_scan(60),
        config(
            network={"activation": activation, "init": init, "hidden": [8]},
            training={"epochs": 2},
            uncertainty={"method": "none"},
        ),
    )
    assert all(np.isfinite(metrics.curves[0].train))


def test_early_stopping_keeps_the_best_weights() -> None:
    """With patience, training stops once validation stops improving, and the
    kept weights give the best epoch's validation loss."""
    ds = analytic_scan(200)
    model, metrics = train(
        ds,
        config(
            optimizer={"name": "adam", "lr": 0.02},
            training={"epochs": 200, "patience": 3},
            uncertainty={"method": "none"},
        ),
    )
    curve = metrics.curves[0]
    assert len(curve.train) < 200
    assert len(curve.train) - 1 - curve.best_epoch == 3
    assert curve.validation[curve.best_epoch] == min(curve.validation)

    samples = good_samples(ds, model.variables)
    _, val_rows, _ = split(len(samples), (0.7, 0.15, 0.15), 0)
    val = samples.take(val_rows)
    scaled = model.scale_outputs(model.predict(val.x).mean["y"][:, None])
    loss = float(np.mean((scaled - model.scale_outputs(val.y)) ** 2))
    assert loss == pytest.approx(curve.validation[curve.best_epoch], rel=1e-4)


def test_penalties_and_input_noise_shrink_the_weights() -> None:
    """L1 and L2 penalties give smaller weights than no penalty."""
    from wakefield.services.surrogate.network import weights

    def norm(**training: Any) -> float:
        model, _ = train(
            analytic_scan(150),
            config(training={"epochs": 10, **training}, uncertainty={"method": "none"}),
        )
        return float(sum(w.abs().sum() for w in weights(model.ensemble)))

    plain = norm()
    assert norm(l1=1e-3) < plain
    assert norm(l2=1e-2) < plain
    assert np.isfinite(norm(input_noise=0.05))


def test_config_errors_say_how_to_fix_them() -> None:
    """MC dropout without dropout, a bad split and unknown variables are refused
    with the fix in the message."""
    with pytest.raises(ValueError, match="needs network.dropout above 0"):
        TrainConfig.load({"uncertainty": {"method": "mc_dropout"}})
    with pytest.raises(ValueError, match="add up to 1"):
        TrainConfig.load({"training": {"split": [0.5, 0.2, 0.2]}})
    with pytest.raises(ValueError, match="nesterov: true needs a momentum"):
        TrainConfig.load(
            {"optimizer": {"name": "sgd", "momentum": 0, "nesterov": True}}
        )
    ds = analytic_scan(50)
    with pytest.raises(SpecError, match=r"outputs: \['q'\] are not scalar outputs"):
        train(ds, config(outputs=["q"]))
    with pytest.raises(SpecError, match=r"image: \['y'\] are not image outputs"):
        train(ds, config(image="y"))
    fixed = ds.copy()
    fixed["z"].attrs["valid_range"] = [1.0, 1.0]
    with pytest.raises(SpecError, match="held fixed"):
        train(fixed, config(inputs=["x", "z"]))
    model, _ = train(fixed, config())
    assert [s.name for s in model.settings] == ["x"]


def test_lume_export_evaluates_like_the_model(
    trained: tuple[SurrogateModel, Any],
) -> None:
    """The LUME TorchModel returns the surrogate's mean scalar outputs."""
    pytest.importorskip("lume_torch")
    model, _ = trained
    lume = model.to_lume()
    x = {
        "x": torch.tensor([0.1, -0.4], dtype=torch.float64),
        "z": torch.tensor([1.0, 0.3], dtype=torch.float64),
    }
    out = lume.evaluate(x)["y"].numpy().ravel()
    np.testing.assert_allclose(
        out, model.predict({k: v.numpy() for k, v in x.items()}).mean["y"], rtol=1e-5
    )
    assert [v.name for v in lume.input_variables] == ["x", "z"]
    assert lume.input_variables[0].value_range == (-1.0, 1.0)


def test_served_model_swaps_only_for_newer_models_of_the_same_variables(
    trained: tuple[SurrogateModel, Any],
) -> None:
    """A newer model of the same variables replaces the served one; an older
    one is ignored; one of other outputs is refused with the reason."""
    from wakefield.services.surrogate.serving import ServedModel

    model, _ = trained
    served = ServedModel()
    assert served.offer(model) and served.model is model
    older = copy.copy(model)
    older.created = "2000-01-01T00:00:00+00:00"
    assert not served.offer(older) and served.model is model
    newer = copy.copy(model)
    newer.created = "2999-01-01T00:00:00+00:00"
    assert served.offer(newer) and served.model is newer
    other, _ = train(
        analytic_scan(80), config(image="spot", outputs=[], network={"hidden": [8]})
    )
    with pytest.raises(RequestError, match="serves one set of outputs"):
        served.offer(other)
    assert served.model is newer
