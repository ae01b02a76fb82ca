"""A student's energy, forces and stress for one fixed neighbour list, recorded as a CUDA graph.

A small student on a few hundred atoms spends most of a step launching GPU kernels (hundreds per
forward and backward pass). Between two neighbour-list builds only the positions change, so the
whole evaluation can be recorded once and replayed with one launch: positions are copied into a
fixed buffer, the graph runs, and the outputs appear in fixed tensors.

Every pair within ``cutoff + skin`` stays in the recorded graph (a replay cannot change the number
of edges); the radial envelope is exactly zero beyond the cutoff, so the pairs farther away add
nothing to energies, forces or stress.

A recording keeps room for a few per cent more edges than it was made with. A new neighbour list
of the same cell that fits is copied into the recorded edge buffers, the free slots filled with
pairs of atom 0 and its own image a few cells away (beyond the cutoff: they add exactly nothing),
so a rebuild costs the neighbour list alone instead of a new recording. That is what makes a small
skin, and so fewer pairs per step, pay.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.data import Batch

from .models.base import StudentPotential
from .models.conservative import energy_forces_stress

WARMUP_PASSES = 3  # on a side stream before recording, as CUDA graph capture requires
# Free edge slots in a recording, as a fraction of its edges: the pair count of a solid or a liquid
# at fixed volume moves by far less between rebuilds; an overflow costs one new recording.
EDGE_HEADROOM = 0.03


def far_image_shift(cell: Tensor, cutoff: float) -> Tensor | None:
    """Cell shift (3,) that puts an atom's own periodic image farther than ``cutoff`` (Å) along the
    longest vector of ``cell`` (3, 3) Å, or None when the cell has no vector (a molecule).

    A pair of an atom with that image adds exactly zero energy, force and stress: it fills the
    unused edge slots of a recording."""
    lengths = cell.norm(dim=1)
    longest = int(lengths.argmax())
    if float(lengths[longest]) == 0.0:
        return None
    shift = torch.zeros(3, dtype=cell.dtype, device=cell.device)
    shift[longest] = math.floor(cutoff / float(lengths[longest])) + 1
    return shift


def recorded_evaluation(model: StudentPotential, batch: Batch, compute_stress: bool,
                        network: Callable | None = None) -> Callable[[], dict[str, Tensor]]:
    """The evaluation a :class:`CapturedStep` records: energy, forces and (if asked) stress of
    ``batch`` (one structure) at the positions ``batch.pos`` holds when it is called. The species
    are checked here, before any recording: the recorded graph cannot raise. ``network`` stands
    in for ``model.atomic_energies_of_species`` (compiled by ``torch.compile``, say)."""
    species = model.species(batch.numbers)
    atomic_energies_of_species = network or model.atomic_energies_of_species

    def evaluate() -> dict[str, Tensor]:
        return energy_forces_stress(
            lambda batch, vectors: atomic_energies_of_species(species, batch.edge_index, vectors),
            batch,
            compute_forces=True,
            compute_stress=compute_stress,
            dtype=model.dtype,
        )

    return evaluate


class EdgeSlots:
    """Fixed edge buffers for one structure's graph, with room for a few more edges.

    Args:
        graph: one structure's graph; its edges are the first taken.
        cutoff: the model's cutoff, Å: the free slots hold pairs farther away than this.

    ``edge_index`` (2, capacity) and ``cell_shifts`` (capacity, 3) keep their storage for good;
    :meth:`take` overwrites them. A cell without vectors (a molecule) has no free slots.
    """

    def __init__(self, graph: Batch, cutoff: float) -> None:
        self.padding_shift = far_image_shift(graph.cell[0], cutoff)
        n_edges = graph.edge_index.shape[1]
        room = 0 if self.padding_shift is None else math.ceil(EDGE_HEADROOM * n_edges) + 1
        self.edge_index = graph.edge_index.new_zeros(2, n_edges + room)
        self.cell_shifts = graph.cell_shifts.new_zeros(n_edges + room, 3)
        self.take(graph.edge_index, graph.cell_shifts)

    def take(self, edge_index: Tensor, cell_shifts: Tensor) -> bool:
        """Hold the edges ``edge_index`` (2, E) and ``cell_shifts`` (E, 3) of the same atoms in the
        same cell, the free slots filled; False (nothing changed) if they do not fit."""
        n_edges, capacity = edge_index.shape[1], self.edge_index.shape[1]
        if n_edges > capacity or (n_edges < capacity and self.padding_shift is None):
            return False
        self.edge_index[:, :n_edges].copy_(edge_index)
        self.cell_shifts[:n_edges].copy_(cell_shifts)
        if n_edges < capacity:
            self.edge_index[:, n_edges:] = 0
            self.cell_shifts[n_edges:] = self.padding_shift
        return True


class FixedBuffersStep:
    """A student's step on fixed buffers of one structure: positions and edge slots that keep their
    storage, as a recording needs; each call evaluates anew (the CPU's counterpart of
    :class:`CapturedStep`, whose calls replay).

    Args:
        model: the eager student.
        graph: the structure's graph (one structure; every edge within ``cutoff + skin``).
        compute_stress: the stress too.
        network: what computes the atomic energies, if not the model's own (see
            :func:`recorded_evaluation`).

    Calling it with positions (N, 3) Å in the model's dtype on the model's device returns the dict
    of :func:`~mlip_distill.models.conservative.energy_forces_stress`. :meth:`take_edges` swaps in a
    new neighbour list of the same cell.
    """

    def __init__(self, model: StudentPotential, graph: Batch, compute_stress: bool,
                 network: Callable | None = None) -> None:
        self.positions = graph.pos.detach().clone()
        self.edges = EdgeSlots(graph, model.cutoff)
        batch = copy.copy(graph)
        batch.pos, batch.edge_index, batch.cell_shifts = self.positions, self.edges.edge_index, self.edges.cell_shifts
        # Kept for as long as the step: a recording reads the tensors this closure holds (the cell,
        # the species), and memory freed under a recording is handed out again while it replays.
        self.evaluate = recorded_evaluation(model, batch, compute_stress, network)

    def take_edges(self, edge_index: Tensor, cell_shifts: Tensor) -> bool:
        """Use these edges of the same atoms in the same cell from now on (see
        :meth:`EdgeSlots.take`); False if they do not fit and a new step is needed."""
        return self.edges.take(edge_index, cell_shifts)

    def __call__(self, positions: Tensor) -> dict[str, Tensor]:
        self.positions.copy_(positions)
        return self.evaluate()


class CapturedStep(FixedBuffersStep):
    """Replays a student on new positions of one structure with a fixed neighbour list: a
    :class:`FixedBuffersStep` (same arguments; ``model`` on a CUDA device) recorded once as a CUDA
    graph. The tensors a call returns are overwritten by the next call."""

    def __init__(self, model: StudentPotential, graph: Batch, compute_stress: bool,
                 network: Callable | None = None) -> None:
        super().__init__(model, graph, compute_stress, network)
        device = self.positions.device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self.evaluate()
        torch.cuda.current_stream(device).wait_stream(side)
        self.cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.cuda_graph):
            self.outputs = self.evaluate()

    def __call__(self, positions: Tensor) -> dict[str, Tensor]:
        self.positions.copy_(positions)
        self.cuda_graph.replay()
        return self.outputs
