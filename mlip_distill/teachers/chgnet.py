"""CHGNet (``chgnet:0.3.0``) as a teacher, with per-atom energies and the atom features of
every graph-convolution block.

Needs the ``chgnet`` extra (``pip install mlip-distill[chgnet]``, which pins ``chgnet`` 0.4.2:
its wheel ships the 0.3.0 weights, and pulls in pymatgen).

The weights are read from the file shipped inside the ``chgnet`` wheel with
``torch.load(weights_only=True)``, never through ``CHGNet.load``, which unpickles the file; the
teacher records the SHA-256 of the file it read.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import chgnet
import numpy as np
import torch
from ase import Atoms, units
from chgnet.model import CHGNet
from pymatgen.core import Lattice, Structure

from mlip_distill.checksums import file_sha256
from mlip_distill.teachers.base import Teacher, TeacherError, structure_key

#: The pretrained models whose weights ship inside the ``chgnet`` wheel, by the name CHGNet
#: gives them. 0.2.0 is left out: it needs a legacy output bias and is superseded by 0.3.0.
SHIPPED_MODELS = ("0.3.0", "r2scan")

#: Vacuum in Å added to a molecule's extent, on top of the atom-graph cutoff, in the box a
#: molecule is put in: every periodic image is then farther than the cutoff from every atom.
MOLECULE_BOX_MARGIN = 1.0


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float64)


def _weights_file(model: str) -> Path:
    """The weights file of a shipped model, ``chgnet/pretrained/<model>/*.pth.tar``."""
    folder = Path(chgnet.__file__).parent / "pretrained" / model
    files = sorted(folder.glob("*.pth.tar"))
    if len(files) != 1:
        raise TeacherError(
            f"teacher spec 'chgnet:{model}': expected one weights file in {folder}, found "
            f"{len(files)}; reinstall chgnet"
        )
    return files[0]


class CHGNetTeacher(Teacher):
    """Labels structures with a pretrained CHGNet model, in float32 like the model itself.

    Gives energy, forces, stress, per-atom energies (CHGNet's energy is a sum of site energies,
    its composition model's elemental shifts included) and the atom features after each
    graph-convolution block. Hessian-vector products are the base class's finite differences
    of the forces. It labels H to Pu (Z 1-94, the rows of CHGNet's atom embedding) and refuses
    other elements before any work.

    Node-feature layers (:meth:`feature_irreps`): ``layer_k`` is the output of atom-convolution
    block k (k = 1 ... 4 for 0.3.0), ``64x0e`` (CHGNet's features are invariant scalars);
    ``layer_3`` is what CHGNet itself returns as ``atom_fea``.

    CHGNet knows only fully periodic crystals. A molecule (pbc all False) is put in a
    rectangular box wider than its extent by the atom-graph cutoff (6 Å) plus
    :data:`MOLECULE_BOX_MARGIN`, so that no periodic image is within reach and the energy is
    that of the lone molecule; its stress is NaN. Structures periodic along some directions
    only are refused.

    The outputs of the last structure evaluated are kept, so that :meth:`node_features` right
    after :meth:`label` of the same structure costs no second evaluation.

    Parameters
    ----------
    model:
        ``"0.3.0"`` (trained on MPtrj, PBE/PBE+U) or ``"r2scan"`` (transfer-learned to r2SCAN).
    device:
        ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, model: str = "0.3.0", device: str = "cpu") -> None:
        spec = f"chgnet:{model}"
        if model not in SHIPPED_MODELS:
            raise TeacherError(
                f"teacher spec '{spec}': not a CHGNet model shipped with chgnet "
                f"{chgnet.__version__}; known models: {', '.join(SHIPPED_MODELS)}"
            )
        weights = _weights_file(model)
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            network = CHGNet.from_dict(checkpoint["model"], version=model)
        # An atom with no neighbour within the cutoff is a free atom, not a mistake to print.
        network.graph_converter.on_isolated_atoms = "ignore"
        self.model = network.to(device).eval()
        self.device = torch.device(device)
        self.cutoff = float(network.graph_converter.atom_graph_cutoff)
        self._captured: dict[str, torch.Tensor] = {}
        for k, block in enumerate(network.atom_conv_layers, start=1):
            block.register_forward_hook(self._capture_hook(f"layer_{k}"))
        self._width = int(network.model_args["atom_fea_dim"])
        self._last: tuple[bytes, dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

        self.name = spec
        self.spec = spec
        self.elements = frozenset(range(1, network.atom_embedding.embedding.num_embeddings + 1))
        self.version = f"chgnet {chgnet.__version__}"
        self.settings = {
            "model": model,
            "weights": f"{weights.parent.name}/{weights.name}",
            "atom_graph_cutoff": self.cutoff,
            "bond_graph_cutoff": float(network.graph_converter.bond_graph_cutoff),
            "dtype": "float32",
            "molecule_box_margin": MOLECULE_BOX_MARGIN,
        }
        self.weights_sha256 = file_sha256(weights)

    def _capture_hook(self, layer: str) -> Callable[[torch.nn.Module, Any, Any], None]:
        """A forward hook that keeps the atom features (N, F) a block outputs under ``layer``."""

        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._captured[layer] = output.detach().clone()

        return hook

    def _structure(self, atoms: Atoms) -> Structure:
        """``atoms`` as the periodic pymatgen structure CHGNet reads; a molecule is boxed."""
        self.check_elements(atoms.numbers)
        if atoms.pbc.all():
            lattice, positions = atoms.cell.array, atoms.positions
        elif not atoms.pbc.any():
            low, high = atoms.positions.min(axis=0), atoms.positions.max(axis=0)
            padding = self.cutoff + MOLECULE_BOX_MARGIN
            lattice = np.diag(high - low + padding)
            positions = atoms.positions - low + padding / 2
        else:
            raise TeacherError(
                f"teacher '{self.name}' labels crystals (periodic in all directions) and "
                f"molecules (in none), not structures with pbc {atoms.pbc.tolist()}"
            )
        return Structure(
            Lattice(lattice), atoms.numbers.tolist(), positions, coords_are_cartesian=True
        )

    def _evaluate(self, atoms: Atoms) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Labels and atom features of every layer of ``atoms`` from one evaluation, reused
        while the same structure (numbers, positions, cell, pbc) is asked for again."""
        key = structure_key(atoms)
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        periodic = bool(atoms.pbc.all())
        graph = self.model.graph_converter(self._structure(atoms)).to(self.device)
        output = self.model([graph], task="efs" if periodic else "ef", return_site_energies=True)
        n_atoms = len(atoms)
        # CHGNet's "e" is per atom; its "s" is +(1/V) ∂E/∂strain, the ASE sign, in GPa.
        stress = np.full(6, np.nan)
        if periodic:
            tensor = _to_numpy(output["s"][0]) * units.GPa
            stress = tensor[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        labels = {
            "energy": np.asarray(float(output["e"][0]) * n_atoms),
            "forces": _to_numpy(output["f"][0]).reshape(n_atoms, 3),
            "stress": stress,
            "atomic_energies": _to_numpy(output["site_energies"][0]).reshape(n_atoms),
        }
        features = {layer: _to_numpy(value) for layer, value in self._captured.items()}
        self._last = (key, labels, features)
        return labels, features

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Energy (eV), forces (N, 3) eV/Å, stress (6,) eV/Å³ (NaN for a molecule) and atomic
        energies (N,) eV, all float64."""
        labels, _ = self._evaluate(atoms)
        return {key: value.copy() for key, value in labels.items()}

    def feature_irreps(self) -> dict[str, str]:
        """``layer_k`` -> e3nn irreps of the atom features after convolution block k."""
        return {
            f"layer_{k}": f"{self._width}x0e"
            for k in range(1, len(self.model.atom_conv_layers) + 1)
        }

    def node_features(self, atoms: Atoms, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """``{layer: (N, F)}`` float64, F the feature width (64 for 0.3.0)."""
        self.check_features(layers)
        _, features = self._evaluate(atoms)
        return {layer: features[layer].copy() for layer in layers}
