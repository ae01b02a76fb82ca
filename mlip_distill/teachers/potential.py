"""A teacher that is a potential package trained by mlip-distill: a large student teaching a
smaller one, with everything a network can give (node features, exact Hessian-vector products)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Batch

from mlip_distill import __version__
from mlip_distill.data.graph import atoms_to_graph
from mlip_distill.package import PotentialError, load_potential
from mlip_distill.teachers.base import Teacher, TeacherError


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float64)


class PotentialTeacher(Teacher):
    """Labels structures with a potential package (see :mod:`mlip_distill.package`), run in
    float64 whatever dtype it was saved in, so that second derivatives are accurate.

    Gives energy, forces, stress, per-atom energies, the node features of every layer the
    model names (:meth:`feature_irreps`), and exact Hessian-vector products by double
    backward. It labels the elements the potential was trained on and refuses others.

    Parameters
    ----------
    path:
        The package folder.
    device:
        ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        try:
            potential = load_potential(path, device=device, dtype=torch.float64)
        except PotentialError as exc:
            raise TeacherError(f"teacher spec 'potential:{path}': {exc}") from exc
        self.model = potential.model
        self.cutoff = potential.cutoff
        self.device = torch.device(device)
        self.name = f"potential:{Path(path).resolve().name}"
        self.spec = f"potential:{path}"
        self.elements = frozenset(potential.elements)
        self.version = f"mlip-distill {__version__}"
        self.settings = {
            "model": potential.metadata["model"],
            "saved_dtype": potential.metadata.get("dtype"),
            "dtype": "float64",
        }
        self.weights_sha256 = potential.metadata["weights_sha256"]

    def _graph(self, atoms: Atoms) -> Batch:
        self.check_elements(atoms.numbers)
        graph = atoms_to_graph(atoms, self.cutoff, dtype=torch.float64)
        return Batch.from_data_list([graph]).to(self.device)

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Energy (eV), forces (N, 3) eV/Å, stress (6,) eV/Å³ (NaN unless periodic in all three
        directions) and atomic energies (N,) eV."""
        periodic = bool(atoms.pbc.all())
        with torch.no_grad():
            output = self.model(
                self._graph(atoms), compute_forces=True, compute_stress=periodic, create_graph=False
            )
        return {
            "energy": np.asarray(float(output["energy"][0])),
            "forces": _to_numpy(output["forces"]),
            "stress": _to_numpy(output["stress"][0]) if periodic else np.full(6, np.nan),
            "atomic_energies": _to_numpy(output["atomic_energies"]),
        }

    def feature_irreps(self) -> dict[str, str]:
        """Every layer the model names, layer -> e3nn irreps (e.g. ``layer_1``)."""
        return dict(self.model.node_feature_irreps())

    def node_features(self, atoms: Atoms, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """``{layer: (N, F)}`` float64, F the dimension of the layer's irreps."""
        self.check_features(layers)
        with torch.no_grad():
            features = self.model(self._graph(atoms), compute_forces=False)["node_features"]
        return {layer: _to_numpy(features[layer]) for layer in layers}

    def hessian_vector_products(self, atoms: Atoms, vectors: np.ndarray) -> np.ndarray:
        """Exact H·v = −∂(F·v)/∂x for each probe v of ``vectors`` (N, K, 3), as (N, K, 3) eV/Å²:
        one forward pass that keeps the graph of the forces, then one backward pass per probe."""
        graph = self._graph(atoms)
        positions = graph.pos.requires_grad_(True)
        forces = self.model(graph, compute_forces=True, create_graph=True)["forces"]
        vectors = torch.as_tensor(vectors, dtype=torch.float64, device=self.device)
        if not forces.requires_grad:  # no atom has a neighbour: the forces are zero everywhere
            return np.zeros(tuple(vectors.shape))
        products = [
            -torch.autograd.grad(
                (forces * vectors[:, k]).sum(), positions, retain_graph=True,
                allow_unused=True, materialize_grads=True,
            )[0]
            for k in range(vectors.shape[1])
        ]
        return _to_numpy(torch.stack(products, dim=1))

    def hvp_method(self) -> str:
        """How :meth:`hessian_vector_products` computes them, for provenance."""
        return "exact: double backward through the float64 model"
