"""A student's energy, forces and stress for one fixed neighbour list, recorded as a CUDA graph.

A small student on a few hundred atoms spends most of a step launching GPU kernels (hundreds per
forward and backward pass). Between two neighbour-list builds only the positions change, so the
whole evaluation can be recorded once and replayed with one launch: positions are copied into a
fixed buffer, the graph runs, and the outputs appear in fixed tensors.

Every pair within ``cutoff + skin`` stays in the recorded graph (a replay cannot change the number
of edges); the radial envelope is exactly zero beyond the cutoff, so the pairs farther away add
nothing to energies, forces or stress.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.data import Batch

from .models.base import StudentPotential
from .models.conservative import energy_forces_stress

WARMUP_PASSES = 3  # on a side stream before recording, as CUDA graph capture requires


def recorded_evaluation(model: StudentPotential, batch: Batch, compute_stress: bool) -> Callable[[], dict[str, Tensor]]:
    """The evaluation a :class:`CapturedStep` records: energy, forces and (if asked) stress of
    ``batch`` (one structure) at the positions ``batch.pos`` holds when it is called. The species
    are checked here, before any recording: the recorded graph cannot raise."""
    species = model.species(batch.numbers)

    def evaluate() -> dict[str, Tensor]:
        return energy_forces_stress(
            lambda batch, vectors: model.atomic_energies_of_species(species, batch.edge_index, vectors),
            batch,
            compute_forces=True,
            compute_stress=compute_stress,
            dtype=model.dtype,
        )

    return evaluate


class CapturedStep:
    """Replays a student on new positions of one structure with a fixed neighbour list.

    Args:
        model: the eager student, on a CUDA device.
        graph: the structure's graph (one structure; every edge within ``cutoff + skin``).
        compute_stress: record the stress too.

    Calling it with positions (N, 3) Å in the model's dtype on the device returns the dict of
    :func:`~mlip_distill.models.conservative.energy_forces_stress`; its tensors are overwritten
    by the next call.
    """

    def __init__(self, model: StudentPotential, graph: Batch, compute_stress: bool) -> None:
        self.positions = graph.pos.detach().clone()
        batch = copy.copy(graph)
        batch.pos = self.positions
        evaluate = recorded_evaluation(model, batch, compute_stress)

        side = torch.cuda.Stream(device=self.positions.device)
        side.wait_stream(torch.cuda.current_stream(self.positions.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                evaluate()
        torch.cuda.current_stream(self.positions.device).wait_stream(side)
        self.cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.cuda_graph):
            self.outputs = evaluate()

    def __call__(self, positions: Tensor) -> dict[str, Tensor]:
        self.positions.copy_(positions)
        self.cuda_graph.replay()
        return self.outputs
