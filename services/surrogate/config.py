"""Configuration of a surrogate: what it learns, its network, how it trains.

:class:`TrainConfig` is everything :func:`~.training.train` needs;
:class:`SurrogateConfig` (the ``config:`` block of the ``surrogate`` kind)
adds how the service serves its models.  Optimizers and learning-rate
schedules are variants chosen by their ``name``, so a validation error
names the exact variant and field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, model_validator

from wakefield.config import StrictModel
from wakefield.events import DataRef

Activation = Literal["tanh", "relu", "leaky_relu", "prelu", "elu", "sigmoid", "silu"]
Init = Literal[
    "default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
]
Policy = Literal["error", "warn", "clip"]


class NetworkConfig(StrictModel):
    """A shared trunk of fully connected layers, a linear head for the scalar
    outputs and, for an image output, an image head from the trunk."""

    hidden: list[int] = Field(default=[64, 64, 64], min_length=1)
    """Width of each hidden layer of the trunk, input side first."""
    activation: Activation = "tanh"
    """Nonlinearity after every hidden layer; output layers are linear."""
    negative_slope: float = Field(default=0.01, ge=0.0, lt=1.0)
    """Slope of ``leaky_relu`` for negative inputs (and PReLU's start value)."""
    init: Init = "xavier_uniform"
    """Weight initialisation of linear and convolution layers; biases start at 0."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout probability after every hidden layer of the trunk."""
    image_head: Literal["pca", "deconv"] = "pca"
    """``pca``: a linear layer to the coefficients of the training images'
    leading principal components (cheap on a CPU); ``deconv``: transposed
    convolutions from a small feature map up to the image (better at sharp
    features that move, costlier: worth a GPU for large images)."""
    image_components: int = Field(default=64, ge=1)
    """Principal components the ``pca`` head predicts."""
    image_channels: int = Field(default=32, ge=1)
    """Channels of the ``deconv`` head's first stage; halved at each upsampling."""
    image_start: int = Field(default=4, ge=1)
    """Smallest side of the ``deconv`` head's first feature map, in pixels."""


class Sgd(StrictModel):
    """Stochastic gradient descent, with momentum or Nesterov momentum."""

    name: Literal["sgd"]
    lr: float = Field(default=1e-2, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: StrictBool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> Sgd:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs a momentum above 0")
        return self


class Adagrad(StrictModel):
    name: Literal["adagrad"]
    lr: float = Field(default=1e-2, gt=0)


class Adadelta(StrictModel):
    name: Literal["adadelta"]
    lr: float = Field(default=1.0, gt=0)
    rho: float = Field(default=0.9, gt=0, lt=1)


class RmsProp(StrictModel):
    name: Literal["rmsprop"]
    lr: float = Field(default=1e-3, gt=0)
    alpha: float = Field(default=0.99, gt=0, lt=1)
    """Smoothing constant of the squared-gradient average."""
    momentum: float = Field(default=0.0, ge=0, lt=1)


class Adam(StrictModel):
    name: Literal["adam"]
    lr: float = Field(default=1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)


class Nadam(StrictModel):
    """Adam with Nesterov momentum."""

    name: Literal["nadam"]
    lr: float = Field(default=2e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)


class Lbfgs(StrictModel):
    """Limited-memory BFGS with a strong-Wolfe line search; best with large
    batches (``training.batch_size`` as large as the training split)."""

    name: Literal["lbfgs"]
    lr: float = Field(default=1.0, gt=0)
    max_iter: int = Field(default=20, ge=1)
    """Iterations per batch."""
    history_size: int = Field(default=50, ge=1)


Optimizer = Annotated[
    Sgd | Adagrad | Adadelta | RmsProp | Adam | Nadam | Lbfgs,
    Field(discriminator="name"),
]


class NoDecay(StrictModel):
    name: Literal["none"]


class ExponentialDecay(StrictModel):
    """``lr * gamma ** epoch``."""

    name: Literal["exponential"]
    gamma: float = Field(default=0.99, gt=0, le=1)


class StepDecay(StrictModel):
    """The learning rate times ``gamma`` every ``step`` epochs."""

    name: Literal["step"]
    step: int = Field(default=50, ge=1)
    gamma: float = Field(default=0.5, gt=0, le=1)


class CosineDecay(StrictModel):
    """Cosine annealing from ``lr`` to ``min_lr`` over all epochs."""

    name: Literal["cosine"]
    min_lr: float = Field(default=0.0, ge=0)


class PlateauDecay(StrictModel):
    """The learning rate times ``factor`` when the validation loss has not
    improved for ``patience`` epochs."""

    name: Literal["plateau"]
    factor: float = Field(default=0.5, gt=0, lt=1)
    patience: int = Field(default=10, ge=1)
    min_lr: float = Field(default=0.0, ge=0)


Schedule = Annotated[
    NoDecay | ExponentialDecay | StepDecay | CosineDecay | PlateauDecay,
    Field(discriminator="name"),
]


class TrainingConfig(StrictModel):
    """The loop: batches, epochs, penalties, noise, early stopping, split."""

    epochs: int = Field(default=300, ge=1)
    batch_size: int = Field(default=64, ge=1)
    l1: float = Field(default=0.0, ge=0)
    """Weight of the L1 penalty on every weight (not biases)."""
    l2: float = Field(default=0.0, ge=0)
    """Weight of the L2 penalty on every weight (not biases)."""
    input_noise: float = Field(default=0.0, ge=0)
    """Standard deviation of Gaussian noise added to the scaled inputs while
    training (the inputs span [-1, 1])."""
    patience: int | None = Field(default=30, ge=1)
    """Stop when the validation loss has not improved for this many epochs
    and keep the best weights; ``null`` trains every epoch."""
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Fractions of the good samples for training, validation and test."""
    seed: int = Field(default=0, ge=0)
    """Seeds the split, the weights and the batch order."""
    image_weight: float = Field(default=1.0, ge=0)
    """Weight of the image's pixel loss against the scalar outputs' loss."""
    threads: int | None = Field(default=1, ge=1)
    """torch CPU threads while training; ``null``: torch's own choice.  One
    thread is fastest for small networks on a shared machine."""

    @model_validator(mode="after")
    def _check_split(self) -> TrainingConfig:
        train, validation, test = self.split
        if min(self.split) < 0 or abs(train + validation + test - 1.0) > 1e-9:
            raise ValueError(
                f"split must be three fractions >= 0 that add up to 1; got {self.split}"
            )
        if train <= 0 or validation <= 0:
            raise ValueError(
                "split needs a training and a validation fraction above 0 "
                f"(validation drives early stopping); got {self.split}"
            )
        return self


class UncertaintyConfig(StrictModel):
    """Where a prediction's standard deviation comes from."""

    method: Literal["ensemble", "mc_dropout", "none"] = "ensemble"
    """``ensemble``: members trained from different seeds; ``mc_dropout``:
    repeated passes with dropout on (needs ``network.dropout`` above 0);
    ``none``: no standard deviation."""
    members: int = Field(default=3, ge=1, le=64)
    """Networks in an ensemble."""
    samples: int = Field(default=30, ge=2, le=10_000)
    """Passes per prediction with MC dropout (a request may ask for others)."""
    seed: int = Field(default=0, ge=0)
    """Seeds the dropout masks, so one request always gets one answer."""


class TrainConfig(StrictModel):
    """What a surrogate learns and how; :func:`train` takes this."""

    inputs: list[str] | None = None
    """Settings the model takes; default: every setting the scan varied."""
    outputs: list[str] | None = None
    """Scalar outputs it predicts; default: every scalar float output."""
    image: str | None = None
    """An image output (two dimensions beyond ``sample``) it also predicts."""
    transforms: dict[str, Literal["log", "asinh"]] = {}
    """Per output, a transform applied before scaling: ``log`` for positive
    outputs spanning decades (a peak current), ``asinh`` for long-tailed
    outputs of either sign (a chirp); predictions stay in the output's unit."""
    network: NetworkConfig = NetworkConfig()
    optimizer: Optimizer = Adam(name="adam")
    schedule: Schedule = NoDecay(name="none")
    training: TrainingConfig = TrainingConfig()
    uncertainty: UncertaintyConfig = UncertaintyConfig()

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.uncertainty.method == "mc_dropout" and self.network.dropout == 0:
            raise ValueError(
                "uncertainty.method mc_dropout needs network.dropout above 0 "
                "(for example 0.1), or use method: ensemble"
            )
        for name in ("inputs", "outputs"):
            names = getattr(self, name)
            if names is not None and len(set(names)) != len(names):
                raise ValueError(f"{name} names a variable twice: {names}")
        return self


class SurrogateConfig(TrainConfig):
    """The ``surrogate`` service: training as above, and serving."""

    model: DataRef | str | None = None
    """An artifact to serve from the start (its URI, or ``{uri, hash}`` to
    check its content); datasets that arrive later train newer models."""
    out_of_range: dict[str, Policy] = {}
    """Per setting, what a request outside the training range gets:
    ``error`` (an error response), ``warn`` (predicted, flagged, warned) or
    ``clip`` (predicted at the range edge, flagged); default: the setting's
    own ``out_of_range``."""
    name: str = Field(default="surrogate", pattern=r"^[A-Za-z0-9._-]+$")
    """Folder name of each model artifact."""
    plots: StrictBool = True
    """Write PNG plots (learning curve, predicted against true) beside it."""
    lume: StrictBool = False
    """Also export the model in the LUME format (needs ``wakefield[lume]``)."""
    max_request: int = Field(default=100_000, ge=1)
    """Most samples one predict request may ask about."""
    inline: int = Field(default=20_000, ge=0)
    """Most numbers (means and standard deviations) a response carries
    inline; larger answers go by reference only, like images."""
    pending: int = Field(default=1000, ge=0)
    """Requests kept, and answered later, while no model is served yet."""
