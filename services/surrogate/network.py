"""The networks: a fully connected trunk with a linear head for the scalar
outputs and, for an image output, an image head.

Both heads read the trunk's last hidden layer, so the image and the scalars
share what the trunk learns about the machine.  Two image heads exist:
``pca`` predicts the coefficients of the training images' leading principal
components (a linear map, cheap on a CPU); ``deconv`` starts from a small
feature map (``image_start`` pixels on its shorter side), doubles it with
each transposed convolution until it covers the image, crops it to the
image's shape and ends in a linear 3x3 convolution.  Everything is rebuilt
from :class:`Architecture` and a ``state_dict``, never unpickled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .config import NetworkConfig

Gain = Literal["linear", "tanh", "relu", "leaky_relu", "sigmoid"]
"""The nonlinearities whose initialisation gain torch knows."""


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a network before loading its weights."""

    inputs: int
    outputs: int
    """Scalar outputs (may be 0 when only an image is learned)."""
    network: NetworkConfig
    image_shape: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["network"] = self.network.dump()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        shape = data.get("image_shape")
        return cls(
            inputs=int(data["inputs"]),
            outputs=int(data["outputs"]),
            network=NetworkConfig.load(data["network"]),
            image_shape=(int(shape[0]), int(shape[1])) if shape else None,
        )


def activation(config: NetworkConfig) -> nn.Module:
    """A fresh activation module of the configured kind."""
    match config.activation:
        case "tanh":
            return nn.Tanh()
        case "relu":
            return nn.ReLU()
        case "leaky_relu":
            return nn.LeakyReLU(config.negative_slope)
        case "prelu":
            return nn.PReLU(init=max(config.negative_slope, 0.01))
        case "elu":
            return nn.ELU()
        case "sigmoid":
            return nn.Sigmoid()
        case "silu":
            return nn.SiLU()
    raise ValueError(f"unknown activation {config.activation!r}")


class ImageDecoder(nn.Module):
    """Latent vector to one image of ``shape`` pixels (rows x columns)."""

    def __init__(
        self, latent: int, shape: tuple[int, int], config: NetworkConfig
    ) -> None:
        super().__init__()
        rows, cols = shape
        stages = max(
            0, int(math.floor(math.log2(max(1, min(rows, cols) / config.image_start))))
        )
        self.shape = shape
        self.start = (math.ceil(rows / 2**stages), math.ceil(cols / 2**stages))
        channels = [max(8, config.image_channels // 2**i) for i in range(stages + 1)]
        self.channels = channels[0]
        self.project = nn.Sequential(
            nn.Linear(latent, channels[0] * self.start[0] * self.start[1]),
            activation(config),
        )
        layers: list[nn.Module] = []
        for i in range(stages):
            layers += [
                nn.ConvTranspose2d(
                    channels[i], channels[i + 1], 4, stride=2, padding=1
                ),
                activation(config),
            ]
        self.upsample = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(-1, self.channels, *self.start)
        h = self.upsample(h)[..., : self.shape[0], : self.shape[1]]
        image: Tensor = self.out(h).squeeze(1)
        return image


class PcaDecoder(nn.Module):
    """Latent vector to one image as the training images' mean plus a
    combination of their leading principal components.

    The mean, the components and each coefficient's scale are buffers set by
    :meth:`set_basis` from the training images before training, and kept in
    the ``state_dict``; only the layer to the coefficients learns.
    """

    def __init__(self, latent: int, shape: tuple[int, int], components: int) -> None:
        super().__init__()
        pixels = shape[0] * shape[1]
        self.shape = shape
        self.coefficients = nn.Linear(latent, components)
        self.register_buffer("mean", torch.zeros(pixels))
        self.register_buffer("basis", torch.zeros(components, pixels))
        self.register_buffer("scale", torch.ones(components))

    def set_basis(self, mean: Tensor, basis: Tensor, scale: Tensor) -> None:
        self.mean.copy_(mean)
        self.basis.copy_(basis)
        self.scale.copy_(scale)

    def forward(self, z: Tensor) -> Tensor:
        c = self.coefficients(z) * self.scale
        image: Tensor = (self.mean + c @ self.basis).view(-1, *self.shape)
        return image


def principal_components(
    images: Tensor, components: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, leading components (rows) and coefficient scales of ``images``
    (samples x rows x columns); missing components are zero rows."""
    flat = images.reshape(len(images), -1).to(torch.float64)
    mean = flat.mean(0)
    kept = min(components, *flat.shape)
    # A randomised SVD (Halko et al.), seeded: the leading components of
    # thousands of images in seconds rather than the full decomposition.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, v = torch.svd_lowrank(flat - mean, q=min(kept + 16, *flat.shape), niter=6)
    basis = torch.zeros(components, flat.shape[1], dtype=torch.float64)
    basis[:kept] = v[:, :kept].T
    scale = ((flat - mean) @ basis.T).std(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return mean.float(), basis.float(), scale.float()


class SurrogateNet(nn.Module):
    """Scaled settings to scaled scalar outputs and, optionally, an image."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        config = arch.network
        layers: list[nn.Module] = []
        width = arch.inputs
        for size in config.hidden:
            layers += [nn.Linear(width, size), activation(config)]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = size
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, arch.outputs) if arch.outputs else None
        self.decoder: ImageDecoder | PcaDecoder | None = None
        if arch.image_shape and config.image_head == "pca":
            self.decoder = PcaDecoder(width, arch.image_shape, config.image_components)
        elif arch.image_shape:
            self.decoder = ImageDecoder(width, arch.image_shape, config)

    def scalars(self, x: Tensor) -> Tensor:
        """The scalar head alone (no image decoding)."""
        h = self.trunk(x)
        scalars: Tensor = self.head(h) if self.head is not None else h[:, :0]
        return scalars

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.trunk(x)
        scalars = self.head(h) if self.head is not None else h[:, :0]
        image = self.decoder(h) if self.decoder is not None else None
        return scalars, image


class Ensemble(nn.Module):
    """The members of one surrogate (one for MC dropout or no uncertainty)."""

    def __init__(self, arch: Architecture, members: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(SurrogateNet(arch) for _ in range(members))

    def scalars(self, x: Tensor) -> Tensor:
        """Stacked scalar outputs: members x samples x outputs."""
        return torch.stack([m.scalars(x) for m in self.members])  # type: ignore[operator]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Stacked outputs: members x samples x outputs (and x rows x columns)."""
        results = [m(x) for m in self.members]
        scalars = torch.stack([r[0] for r in results])
        images = [r[1] for r in results if r[1] is not None]
        return scalars, torch.stack(images) if images else None


def initialise(module: nn.Module, config: NetworkConfig) -> None:
    """Weights of every linear and convolution layer as configured; biases 0."""
    if config.init == "default":
        return
    gains: dict[str, Gain] = {
        "tanh": "tanh",
        "relu": "relu",
        "leaky_relu": "leaky_relu",
        "sigmoid": "sigmoid",
    }
    gain_name: Gain = gains.get(config.activation, "linear")
    for layer in module.modules():
        if not isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            continue
        weight = layer.weight
        match config.init:
            case "xavier_uniform":
                nn.init.xavier_uniform_(weight, gain=_gain(gain_name, config))
            case "xavier_normal":
                nn.init.xavier_normal_(weight, gain=_gain(gain_name, config))
            case "kaiming_uniform":
                nn.init.kaiming_uniform_(
                    weight, a=_slope(config), nonlinearity=_kaiming(config)
                )
            case "kaiming_normal":
                nn.init.kaiming_normal_(
                    weight, a=_slope(config), nonlinearity=_kaiming(config)
                )
            case "orthogonal":
                nn.init.orthogonal_(weight, gain=_gain(gain_name, config))
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def _gain(name: Gain, config: NetworkConfig) -> float:
    if name == "leaky_relu":
        return nn.init.calculate_gain(name, config.negative_slope)
    return nn.init.calculate_gain(name)


def _slope(config: NetworkConfig) -> float:
    return (
        config.negative_slope if config.activation in ("leaky_relu", "prelu") else 0.0
    )


def _kaiming(config: NetworkConfig) -> Literal["leaky_relu", "relu"]:
    return "leaky_relu" if config.activation in ("leaky_relu", "prelu") else "relu"


def weights(module: nn.Module) -> list[Tensor]:
    """The weight tensors that L1 and L2 penalties act on (not biases)."""
    return [
        layer.weight
        for layer in module.modules()
        if isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)
    ]
