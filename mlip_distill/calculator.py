"""ASE calculator for a distilled student potential."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from torch_geometric.data import Batch

from .captured_step import CapturedStep
from .compiled import AtomicEnergyNetwork, CompiledStudent
from .data.graph import neighbour_list_on_device
from .package import Potential, PotentialError, load_potential, read_metadata


# Above this many atoms the eager path, which evaluates only the pairs within the cutoff, was
# faster than replaying a CUDA graph of every pair within cutoff + skin (H200: at 32,768 atoms by
# 1.6x; at 13,824 the compiled network's replay was the fastest, the eager network's the slowest).
CUDA_GRAPH_MAX_ATOMS = 20_000
# Neighbour-list skin, Å, by device. On the CPU only the pairs within the cutoff are evaluated, and
# a build costs more than dropping the rest. A CUDA-graph replay evaluates every pair within
# cutoff + skin, and a rebuild of the same cell costs only the neighbour list: a thinner skin pays.
DEFAULT_SKIN = {"cpu": 1.0, "cuda": 0.5}


class StudentCalculator(Calculator):
    """Energy, per-atom energies, forces and stress of a student, for ASE.

    The neighbour list is built with ``cutoff + skin`` and reused between calls until an atom
    has moved more than half the skin, or the cell, periodicity or atoms change; each call keeps
    only the pairs closer than the cutoff.

    Args:
        potential: a package folder (see :mod:`mlip_distill.package`) or a loaded :class:`Potential`.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"`` (default: the package's) or ``"float64"``.
        skin: extra neighbour-list radius in Å (default: :data:`DEFAULT_SKIN` of the device).
        compiled: run the compiled student (``True``; an error if the package has none or it
            cannot run in ``dtype``), the eager one (``False``), or the compiled one where the
            package has it for this dtype and the CPU (``"auto"``). Both give the same numbers
            to float32 precision; ``self.compiled`` says which runs.
        cuda_graph: on a CUDA device, record each evaluation as a CUDA graph for the current
            neighbour list and replay it until the next build (see
            :mod:`mlip_distill.captured_step`): one launch per step instead of hundreds. Every
            pair within ``cutoff + skin`` is then evaluated (beyond the cutoff they add zero).
            ``"auto"`` (default) records structures of up to :data:`CUDA_GRAPH_MAX_ATOMS` atoms,
            where launches cost more than the extra pairs (``benchmarks/results/gpu_check``).
        compile_network: compile the network (the compiled or the eager one) with
            ``torch.compile``: kernels made on this machine at the first call (tens of seconds,
            cached on disk for later processes), then faster calls: on the CPU 1.2-1.4x for NequIP,
            2x for PaiNN on one thread (``benchmarks/results/compiled_vs_eager.md``); on a GPU
            fused Triton kernels inside the CUDA graph (``benchmarks/results/gpu_check_h200.md``).
            Worth it for MD, not for a few calls.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(
        self,
        potential: str | Path | Potential,
        device: str = "cpu",
        dtype: str | None = None,
        skin: float | None = None,
        compiled: bool | str = "auto",
        cuda_graph: bool | str = "auto",
        compile_network: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if compiled not in (True, False, "auto"):
            raise ValueError(f"compiled must be True, False or 'auto', not {compiled!r}")
        if compile_network and torch.device(device).type == "cuda" and (cuda_graph is False or compiled is True):
            raise ValueError("compile_network on a GPU compiles the eager student inside the CUDA graph: "
                             "cuda_graph must not be False, compiled must not be True")
        torch_dtype = getattr(torch, dtype) if dtype else None
        if not isinstance(potential, Potential):
            load_compiled = compiled is True or (compiled == "auto" and _has_compiled(potential, torch_dtype, device))
            potential = load_potential(potential, device=device, dtype=torch_dtype, compiled=load_compiled)
        elif torch_dtype is not None:
            potential.model.to(dtype=torch_dtype)
        runnable = potential.compiled is not None and potential.compiled.network_dtype == potential.model.dtype
        if compiled is True and not runnable:
            raise PotentialError("this potential has no compiled model loaded in its dtype (load_potential(compiled=True))")
        if cuda_graph not in (True, False, "auto"):
            raise ValueError(f"cuda_graph must be True, False or 'auto', not {cuda_graph!r}")
        on_cuda = torch.device(device).type == "cuda"
        if cuda_graph is True and not on_cuda:
            raise ValueError(f"cuda_graph=True needs a CUDA device, not {device!r}")
        self.potential = potential
        self.compiled = compiled is not False and runnable
        self.model = (potential.compiled if self.compiled else potential.model).to(device)
        self.device = torch.device(device)
        self.dtype = next(potential.model.parameters()).dtype
        self.cutoff = potential.cutoff
        self.skin = float(DEFAULT_SKIN.get(self.device.type, 1.0) if skin is None else skin)
        self.neighbour_list_builds = 0
        self.neighbour_list_on = self.device.type  # "cpu" if vesin cannot run on the device
        self.cuda_graph = cuda_graph if on_cuda and not self.compiled else False
        # on a GPU the compiled network runs inside the CUDA-graph recordings (larger cells: eager)
        self._compiled_on_gpu = torch.compile(self.model.atomic_energies_of_species, dynamic=True) if (
            compile_network and on_cuda) else None
        if compile_network and not on_cuda:
            network = self.model.network if self.compiled else AtomicEnergyNetwork(self.model)
            # the C++ wrapper calls the kernels without Python in between: most of a small cell's gain
            compiled = torch.compile(network, dynamic=True, options={"cpp_wrapper": True})
            self.model = CompiledStudent(compiled, self.dtype)
        self._captured: dict[bool, CapturedStep] = {}  # by "with stress", for the current neighbour list
        self.cuda_graph_error: str | None = None  # why recording failed, if it did (the calculator then runs eagerly)
        self.cuda_graph_recordings = 0
        self._graph = None
        self._reference: tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _same_structure(self, atoms: Atoms) -> tuple[bool, bool]:
        """Whether ``atoms`` has the species, in order, of the last neighbour list; and whether it
        also has its cell and periodicity."""
        if self._reference is None:
            return False, False
        _, cell, pbc, numbers = self._reference
        same_atoms = np.array_equal(numbers, atoms.numbers)
        return same_atoms, same_atoms and np.array_equal(pbc, atoms.pbc) and np.array_equal(cell, atoms.cell.array)

    def _moved_half_skin(self, positions: torch.Tensor) -> bool:
        """Whether an atom has moved more than half the skin since the last neighbour list."""
        moved = float((positions - self._reference[0]).norm(dim=1).max()) if len(positions) else 0.0
        return moved > 0.5 * self.skin

    def _rebuild(self, atoms: Atoms, positions: torch.Tensor, same_atoms: bool, same_cell: bool) -> None:
        """Neighbour list within ``cutoff + skin`` on the calculator's device, kept as a graph;
        ``same_atoms``, ``same_cell``: what :meth:`_same_structure` says of ``atoms``."""
        if not same_atoms:
            self.potential.check_elements(atoms.numbers, where=atoms.get_chemical_formula())
        cell = torch.as_tensor(atoms.cell.array, device=self.device)
        radius = self.cutoff + self.skin
        try:
            edge_index, cell_shifts = neighbour_list_on_device(positions, cell, atoms.pbc, radius)
        except RuntimeError as exc:  # vesin's CUDA kernels cannot run here (no NVRTC, say)
            if self.device.type == "cpu":
                raise
            if self.neighbour_list_on != "cpu":
                warnings.warn(f"neighbour list on the CPU: vesin cannot run on {self.device} ({exc})", stacklevel=2)
            self.neighbour_list_on = "cpu"
            on_host = neighbour_list_on_device(positions.cpu(), cell.cpu(), atoms.pbc, radius)
            edge_index, cell_shifts = (tensor.to(self.device) for tensor in on_host)
        # the atoms' part of the graph is kept while they stay the same (a new Batch costs 0.2 ms)
        graph = copy.copy(self._graph) if same_atoms else self._atoms_graph(atoms)
        graph.pos, graph.edge_index, graph.cell_shifts = positions.to(self.dtype), edge_index, cell_shifts.to(self.dtype)
        graph.cell = cell.to(self.dtype).reshape(1, 3, 3)
        graph.pbc = torch.as_tensor(atoms.pbc, device=self.device).reshape(1, 3)
        self._graph = graph
        # a recording of the same cell replays the new pairs if they fit in it (no new recording)
        self._captured = {with_stress: step for with_stress, step in self._captured.items()
                          if same_cell and step.take_edges(edge_index, graph.cell_shifts)}
        self._reference = (positions, atoms.cell.array.copy(), atoms.pbc.copy(), atoms.numbers.copy())
        self.neighbour_list_builds += 1

    def _atoms_graph(self, atoms: Atoms) -> Batch:
        """A one-structure Batch of ``atoms`` without geometry, made directly (Batch.from_data_list
        costs 6x more)."""
        n_atoms = len(atoms)
        return Batch(
            numbers=torch.as_tensor(atoms.numbers, device=self.device),
            n_atoms=torch.tensor([n_atoms], device=self.device),
            batch=torch.zeros(n_atoms, dtype=torch.long, device=self.device),
            ptr=torch.tensor([0, n_atoms], device=self.device),
        )

    def _positions(self, atoms: Atoms) -> torch.Tensor:
        """Positions (N, 3) on the device, the only copy to it per call; the neighbour list is
        rebuilt first when they have moved too far."""
        positions = torch.as_tensor(atoms.positions, device=self.device)
        same_atoms, same_cell = self._same_structure(atoms)
        if not same_cell or self._moved_half_skin(positions):
            self._rebuild(atoms, positions, same_atoms, same_cell)
        return positions.to(self.dtype)

    def _graph_for(self, atoms: Atoms) -> Batch:
        positions = self._positions(atoms)
        graph = self._graph
        if self.skin == 0.0:  # built at these very positions, within the cutoff: nothing to drop
            return graph
        centres, neighbours = graph.edge_index
        vectors = positions[neighbours] - positions[centres] + graph.cell_shifts @ graph.cell[0]
        within = vectors.square().sum(dim=1) < self.cutoff**2
        current = copy.copy(graph)  # shares the cached tensors; only the fields below are replaced
        current.pos = positions
        current.edge_index = graph.edge_index[:, within]
        current.cell_shifts = graph.cell_shifts[within]
        return current

    def _replay(self, atoms: Atoms, want_stress: bool) -> dict:
        positions = self._positions(atoms)
        if want_stress not in self._captured:
            try:
                self._captured[want_stress] = CapturedStep(self.model, self._graph, want_stress, self._compiled_on_gpu)
                self.cuda_graph_recordings += 1
            except RuntimeError as exc:  # an operation the capture refuses: run eagerly from now on
                warnings.warn(f"cuda_graph turned off: recording the student failed ({exc})", stacklevel=2)
                self.cuda_graph, self.cuda_graph_error = False, str(exc)
                return self.model(self._graph_for(atoms), compute_forces=True, compute_stress=want_stress)
        return self._captured[want_stress](positions)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, as ASE's ``check_state`` says it, compared
        exactly: ASE's comparison within 1e-15 costs a twentieth of a small cell's step, paid
        for energy, forces and stress each."""
        if self.atoms is None:
            return list(all_changes)
        checked = set(all_changes) - set(self.ignored_changes)
        changes = [name for name in ("cell", "pbc") if name in checked
                   and not np.array_equal(getattr(self.atoms, name), getattr(atoms, name))]
        before, now = self.atoms.arrays, atoms.arrays
        changes += sorted(checked & (set(before) ^ set(now)))
        changes += [name for name in sorted(checked & set(before) & set(now)) if not np.array_equal(before[name], now[name])]
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        # Stress whenever the cell is periodic, asked for or not: it adds a few per cent to a call,
        # and ASE asks for energy, forces and stress one at a time (a second call otherwise).
        want_stress = bool(self.atoms.pbc.all())
        if self.cuda_graph is True or (self.cuda_graph == "auto" and len(self.atoms) <= CUDA_GRAPH_MAX_ATOMS):
            output = self._replay(self.atoms, want_stress)
        else:
            batch = self._graph_for(self.atoms)
            output = self.model(batch, compute_forces=True, compute_stress=want_stress, create_graph=False)
        energy = float(output["energy"].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": output["atomic_energies"].detach().cpu().double().numpy(),
            "forces": output["forces"].detach().cpu().double().numpy(),
        }
        if want_stress:
            self.results["stress"] = output["stress"].detach().cpu().double().numpy()[0]


def _has_compiled(directory: str | Path, dtype: torch.dtype | None, device: str) -> bool:
    """Whether the package holds a compiled model that runs in ``dtype`` on ``device``."""
    metadata = read_metadata(directory)
    entry = metadata.get("compiled")
    wanted = str(dtype).removeprefix("torch.") if dtype else metadata.get("dtype")
    return bool(entry) and entry.get("dtype") == wanted and torch.device(device).type == "cpu"
