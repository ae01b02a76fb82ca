"""SevenNet-0 and the other pretrained SevenNet models as a teacher, with per-atom energies,
node features of every interaction block and exact Hessian-vector products.

Needs the ``sevennet`` extra (``pip install mlip-distill[sevennet]``, which pins ``sevenn``).

Only the pretrained models that ``sevenn`` names (``7net-0``, ``7net-l3i5``, ...) are accepted,
never a checkpoint path: ``sevenn`` reads a checkpoint with ``torch.load(weights_only=False)``,
which unpickles and so could run code hidden in a file from the internet. The checkpoints it
names ship inside the ``sevenn`` wheel (SevenNet-0 does) or come from the SevenNet authors'
own download links, and are read by ``sevenn``'s own loader; the teacher records the SHA-256
of the file it read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sevenn
import sevenn._keys as KEY
import torch
from ase import Atoms
from sevenn.atom_graph_data import AtomGraphData
from sevenn.util import get_available_pretrained_models, load_checkpoint, pretrained_name_to_path

from mlip_distill.checksums import file_sha256
from mlip_distill.data.graph import neighbour_list
from mlip_distill.teachers.base import Teacher, TeacherError, structure_key

# The module of each interaction block k (0-based) whose output is the node features after it.
_BLOCK_OUTPUT_SUFFIX = "_equivariant_gate"

# SevenNet's model computes in float32 (its one-hot embedding is hard-coded to float32).
_DTYPE = torch.float32


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float64)


class SevenNetTeacher(Teacher):
    """Labels structures with a pretrained SevenNet model, as ``sevenn``'s own ASE calculator
    would, in float32 like the model itself.

    Gives energy, forces, stress, per-atom energies (SevenNet's energy is a sum of them), the
    node features after each interaction block, and exact Hessian-vector products by double
    backward. It labels the elements of the model's type map (89 for SevenNet-0: H to Pu
    without Po, At, Rn, Fr, Ra) and refuses others before any work.

    Node-feature layers (:meth:`feature_irreps`): ``layer_k`` is the output of interaction
    block k (k = 1 ... number of blocks, 5 for SevenNet-0), i.e. of sevenn's module
    ``{k-1}_equivariant_gate``; for SevenNet-0 ``layer_1`` to ``layer_4`` have irreps
    ``128x0e+64x1e+32x2e`` and ``layer_5`` has ``128x0e``.

    The model is loaded once; the graph of each structure is built with
    :func:`mlip_distill.data.graph.neighbour_list`. The outputs of the last structure evaluated
    are kept, so that :meth:`node_features` right after :meth:`label` of the same structure
    (as :func:`~mlip_distill.teachers.labelling.label_file` asks) costs no second evaluation.

    Parameters
    ----------
    model:
        A pretrained model name that ``sevenn`` knows, e.g. ``"7net-0"``. Multi-fidelity
        models, which need a ``modal``, are refused.
    device:
        ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, model: str = "7net-0", device: str = "cpu") -> None:
        spec = f"sevennet:{model}"
        try:
            checkpoint_path = pretrained_name_to_path(model)
        except ValueError as exc:
            raise TeacherError(
                f"teacher spec '{spec}': not a pretrained SevenNet model; known models: "
                f"{', '.join(get_available_pretrained_models())} (checkpoint files are refused: "
                "loading one unpickles it)"
            ) from exc
        except OSError as exc:  # a model not in the wheel whose download failed
            raise TeacherError(f"teacher spec '{spec}': cannot get the checkpoint: {exc}") from exc
        checkpoint = load_checkpoint(checkpoint_path)
        network = checkpoint.build_model()
        if network.modal_map:
            raise TeacherError(
                f"teacher spec '{spec}': multi-fidelity SevenNet models (modal "
                f"{', '.join(network.modal_map)}) are not supported"
            )
        network.set_is_batch_data(False)
        self.model = network.to(device).eval()
        self.device = torch.device(device)
        self.cutoff = float(network.cutoff)
        self._block_outputs = {
            f"layer_{int(name.removesuffix(_BLOCK_OUTPUT_SUFFIX)) + 1}": module
            for name, module in network.named_children()
            if name.endswith(_BLOCK_OUTPUT_SUFFIX)
        }
        self._captured: dict[str, torch.Tensor] = {}
        for layer, module in self._block_outputs.items():
            module.register_forward_hook(self._capture_hook(layer))
        self._last: tuple[bytes, dict[str, np.ndarray], dict[str, np.ndarray]] | None = None

        self.name = spec
        self.spec = spec
        self.elements = frozenset(int(z) for z in network.type_map)
        self.version = f"sevenn {sevenn.__version__}"
        self.settings = {
            "model": model,
            "checkpoint": f"{Path(checkpoint_path).parent.name}/{Path(checkpoint_path).name}",
            "cutoff": self.cutoff,
            "dtype": "float32",
        }
        self.weights_sha256 = file_sha256(checkpoint_path)

    def _capture_hook(self, layer: str) -> Callable[[torch.nn.Module, Any, Any], None]:
        """A forward hook that keeps the node features (N, F) a block outputs under ``layer``."""

        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            self._captured[layer] = output[KEY.NODE_FEATURE].detach().clone()

        return hook

    def _graph(self, atoms: Atoms, positions: torch.Tensor) -> AtomGraphData:
        """SevenNet's input record of ``atoms``, with edge vectors computed from ``positions``
        (N, 3) Å, so that they stay in its autograd graph when ``positions`` requires grad."""
        self.check_elements(atoms.numbers)
        centres, neighbours, shifts = neighbour_list(
            atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff
        )
        edge_index = torch.as_tensor(np.stack([centres, neighbours]), device=self.device)
        cell = torch.as_tensor(atoms.cell.array, dtype=_DTYPE, device=self.device)
        shifts = torch.as_tensor(shifts, dtype=_DTYPE, device=self.device)
        edge_vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts @ cell
        numbers = torch.as_tensor(atoms.numbers, dtype=torch.int64, device=self.device)
        volume = abs(atoms.cell.volume) if atoms.pbc.all() else 0.0  # sevenn guards zero
        return AtomGraphData(
            x=numbers,
            edge_index=edge_index,
            pos=positions,
            **{
                KEY.ATOMIC_NUMBERS: numbers,
                KEY.EDGE_VEC: edge_vectors,
                KEY.CELL_VOLUME: torch.tensor(volume, dtype=_DTYPE, device=self.device),
                KEY.NUM_ATOMS: torch.tensor(len(atoms), device=self.device),
            },
        )

    def _positions(self, atoms: Atoms, requires_grad: bool = False) -> torch.Tensor:
        return torch.tensor(
            atoms.positions, dtype=_DTYPE, device=self.device, requires_grad=requires_grad
        )

    def _evaluate(self, atoms: Atoms) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Labels and node features of every layer of ``atoms`` from one evaluation, reused
        while the same structure (numbers, positions, cell, pbc) is asked for again."""
        key = structure_key(atoms)
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        output = self.model(self._graph(atoms, self._positions(atoms)))
        # sevenn's stress is −(1/V) ∂E/∂strain (positive under compression) in the order xx,
        # yy, zz, xy, yz, zx; ASE's is +(1/V) ∂E/∂strain in Voigt order xx, yy, zz, yz, xz, xy.
        stress = -output[KEY.PRED_STRESS][[0, 1, 2, 4, 5, 3]]
        labels = {
            "energy": np.asarray(float(output[KEY.PRED_TOTAL_ENERGY].detach())),
            "forces": _to_numpy(output[KEY.PRED_FORCE]).reshape(len(atoms), 3),
            "stress": _to_numpy(stress) if atoms.pbc.all() else np.full(6, np.nan),
            "atomic_energies": _to_numpy(output[KEY.ATOMIC_ENERGY]).reshape(len(atoms)),
        }
        features = {layer: _to_numpy(value) for layer, value in self._captured.items()}
        self._last = (key, labels, features)
        return labels, features

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Energy (eV), forces (N, 3) eV/Å, stress (6,) eV/Å³ (NaN unless periodic in all three
        directions) and atomic energies (N,) eV, all float64."""
        labels, _ = self._evaluate(atoms)
        return {key: value.copy() for key, value in labels.items()}

    def feature_irreps(self) -> dict[str, str]:
        """``layer_k`` -> e3nn irreps of the node features after interaction block k."""
        return {
            layer: str(module.gate.irreps_out) for layer, module in self._block_outputs.items()
        }

    def node_features(self, atoms: Atoms, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """``{layer: (N, F)}`` float64, F the dimension of the layer's irreps."""
        self.check_features(layers)
        _, features = self._evaluate(atoms)
        return {layer: features[layer].copy() for layer in layers}

    def hessian_vector_products(self, atoms: Atoms, vectors: np.ndarray) -> np.ndarray:
        """Exact H·v = −∂(F·v)/∂x for each probe v of ``vectors`` (N, K, 3), as (N, K, 3) eV/Å².

        One forward pass keeps the graph of the forces, then one backward pass per probe. The
        edge vectors are built from the positions inside the autograd graph, and the model is
        in training mode for the pass: that only makes sevenn's force module keep the graph of
        its gradient (``create_graph``); SevenNet has no dropout or batch normalisation, so
        the energy is the same function as in evaluation mode.
        """
        positions = self._positions(atoms, requires_grad=True)
        graph = self._graph(atoms, positions)
        vectors_t = torch.as_tensor(vectors, dtype=_DTYPE, device=self.device)
        self.model.train()
        try:
            forces = self.model(graph)[KEY.PRED_FORCE]
        finally:
            self.model.eval()
        products = [
            -torch.autograd.grad(
                (forces * vectors_t[:, k]).sum(), positions, retain_graph=True,
                allow_unused=True, materialize_grads=True,
            )[0]
            for k in range(vectors_t.shape[1])
        ]
        return _to_numpy(torch.stack(products, dim=1))

    def hvp_method(self) -> str:
        """How :meth:`hessian_vector_products` computes them, for provenance."""
        return "exact: double backward through the float32 SevenNet model"
