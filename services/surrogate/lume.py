"""Export to the LUME model format (``lume-torch``), for LUME tools.

Needs the optional extra ``wakefield[lume]``; lume-torch is imported only
here.  The exported ``TorchModel`` takes the settings and returns the
scalar outputs, both in physical units: its module holds the ensemble and
the normalisation, so it needs no transformers.  LUME's own range checks
follow each setting's policy (``clip`` becomes ``warn``, LUME has no clip).

lume-torch writes modules with pickle and loads them with pickle allowed:
its files run code when loaded, so load them only from sources you trust.
wakefield's own artifact (``model.json`` and ``weights.pt``) never does.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from wakefield.errors import RegistryError

from .network import Ensemble

if TYPE_CHECKING:
    from .model import SurrogateModel

log = logging.getLogger(__name__)

LUME_FILE = "model.yml"
_VALIDATION = {"error": "error", "warn": "warn", "clip": "warn"}


class PhysicalScalars(nn.Module):
    """Settings to the ensemble's mean scalar outputs, both in physical units."""

    def __init__(self, model: SurrogateModel) -> None:
        super().__init__()
        self.normalisation = model.normalisation
        self.ensemble = Ensemble(model.architecture, len(model.ensemble.members))
        self.ensemble.load_state_dict(model.ensemble.state_dict())
        self.ensemble.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        # lume-torch may cast the whole module to double: follow the weights.
        dtype = next(self.ensemble.parameters()).dtype
        scaled = self.normalisation.scale_inputs(x).to(dtype)
        members = self.ensemble.scalars(scaled).to(x.dtype)
        y: Tensor = self.normalisation.unscale_outputs(members).mean(0)
        return y


def to_lume(model: SurrogateModel) -> Any:
    """The model's scalar outputs as a lume-torch ``TorchModel``."""
    lume = _import()
    inputs = [
        lume.TorchScalarVariable(
            name=s.name,
            default_value=s.default,
            value_range=s.range,
            unit=s.unit,
            description=s.description,
            default_validation_config=_VALIDATION[s.out_of_range],
        )
        for s in model.settings
    ]
    outputs = [
        lume.TorchScalarVariable(name=o.name, unit=o.unit, description=o.description)
        for o in model.outputs
    ]
    return lume.TorchModel(
        input_variables=inputs,
        output_variables=outputs,
        model=PhysicalScalars(model),
        precision="double",
    )


def lume_files(model: SurrogateModel) -> dict[str, bytes]:
    """The files of a LUME dump (``model.yml`` and the pickled module);
    trusted-only, like every lume-torch dump."""
    exported = to_lume(model)
    with tempfile.TemporaryDirectory() as folder:
        exported.dump(str(Path(folder) / LUME_FILE), save_models=True)
        return {
            p.name: p.read_bytes()
            for p in sorted(Path(folder).iterdir())
            if p.is_file()
        }


def _import() -> Any:
    try:
        import lume_torch.models as models
        import lume_torch.variables as variables
    except ImportError as exc:
        raise RegistryError(
            f"exporting to the LUME format needs lume-torch ({exc}); install it "
            "with `pip install wakefield[lume]`"
        ) from exc

    class _Lume:
        TorchModel = models.TorchModel
        TorchScalarVariable = variables.TorchScalarVariable

    return _Lume
