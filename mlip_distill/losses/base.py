"""The contract every loss term fulfils: masks and weights, NaN/Inf checks, reduction.

==========================  ==============================================================
member                      meaning
==========================  ==============================================================
``name``                    key under which the term is logged (``loss_<name>``)
``required_labels``         batch keys the term reads; missing (NaN) entries are masked
``requires_position_grad``  the term differentiates forces with respect to positions, so
                            ``batch.pos.requires_grad`` must be set before the model runs and
                            the forces computed with ``create_graph=True``
``forward``                 ``(prediction, batch) -> Tensor``: the reduced loss (dimensionless)
==========================  ==============================================================

``prediction`` is the student's output dict (``energy`` (B,) eV, ``atomic_energies`` (N,) eV,
``forces`` (N, 3) eV/Å, ``stress`` (B, 6) eV/Å³, ``node_features`` ``{name: (N, F)}``); ``batch``
the graph batch of :mod:`mlip_distill.data.graph` carrying the teacher's labels.

Masks and weights, read from the batch when present:

=====================  ======  =========  ==============================================
batch key              shape   dtype      effect
=====================  ======  =========  ==============================================
``structure_mask``     (B,)    bool       False drops every entry of the structure
``atom_mask``          (N,)    bool       False drops the atom's entries (per-atom terms)
``structure_weight``   (B,)    float ≥ 0  multiplies the structure's entries
``atom_weight``        (N,)    float ≥ 0  multiplies the atom's entries (per-atom terms)
=====================  ======  =========  ==============================================

A label that is NaN is missing: its entry is dropped, never replaced by zero. A dropped entry
does not count in the mean; a weighted entry does, with its weight multiplying its error.

Reductions: ``sum`` adds the weighted entries; ``mean`` divides that sum by the number of entries
kept *summed over all data-parallel ranks*; ``none`` returns the kept entries' weighted values,
flattened, so that their mean equals ``mean`` on one rank. Averaging each rank's own mean
instead would weight an atom in a batch of small structures more than an atom in a batch of
large ones, so the result would depend on how the data are sharded. DDP averages gradients over
ranks, so the local sum is multiplied by the world size to undo that average. Every rank must
therefore reduce every term, even with no entries of its own, or the count's all-reduce hangs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")


class NonFiniteLossError(FloatingPointError):
    """A loss term met NaN or Inf in a prediction, a label or its own result."""


def global_count(count: Tensor) -> tuple[Tensor, int]:
    """Number of kept entries over all data-parallel ranks, and the world size."""
    if dist.is_available() and dist.is_initialized():
        count = count.detach().clone()
        dist.all_reduce(count)
        return count, dist.get_world_size()
    return count, 1


def reduce_entries(per_entry: Tensor, reduction: Reduction) -> Tensor:
    """Reduce the kept entries' weighted values (M,) as the module docstring describes."""
    if reduction == "none":
        return per_entry
    total = per_entry.sum()
    if reduction == "sum":
        return total
    count, world = global_count(torch.tensor(float(per_entry.numel()), dtype=total.dtype, device=total.device))
    return total * world / count.clamp(min=1)


def structure_of_rows(batch, per_atom: bool) -> Tensor:
    """Structure index in the batch of each row: (N,) for per-atom rows, (B,) for structures."""
    if per_atom:
        return batch.batch
    return torch.arange(int(batch.num_graphs), device=batch.n_atoms.device)


def row_weights(batch, per_atom: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Weight (R,) and kept flag (R,) of each row (structure or atom) from the batch's masks and
    weights (module docstring); all ones and True when the batch has none."""
    structures = int(batch.num_graphs)
    device = batch.n_atoms.device
    weight = _batch_value(batch, "structure_weight", torch.ones(structures, dtype=dtype, device=device))
    kept = _batch_value(batch, "structure_mask", torch.ones(structures, dtype=torch.bool, device=device))
    if bool((weight < 0).any()):
        raise ValueError("batch.structure_weight must be non-negative")
    weight, kept = weight.to(dtype), kept.bool()
    if not per_atom:
        return weight, kept
    atoms = batch.batch
    atom_weight = _batch_value(batch, "atom_weight", torch.ones(len(atoms), dtype=dtype, device=device))
    atom_kept = _batch_value(batch, "atom_mask", torch.ones(len(atoms), dtype=torch.bool, device=device))
    if bool((atom_weight < 0).any()):
        raise ValueError("batch.atom_weight must be non-negative")
    return weight[atoms] * atom_weight.to(dtype), kept[atoms] & atom_kept.bool()


def _batch_value(batch, key: str, default: Tensor) -> Tensor:
    return batch[key].reshape(default.shape) if key in batch else default


def broadcast_rows(row_values: Tensor, like: Tensor) -> Tensor:
    """A per-row value (R,) expanded to the shape of ``like`` (R, ...)."""
    return row_values.reshape(row_values.shape + (1,) * (like.dim() - 1)).expand(like.shape)


class LossTerm(nn.Module):
    """Base of every term: options shared by all, checks and reduction (module docstring).

    Args:
        reduction: ``mean``, ``sum`` or ``none``.
        scale: the term's unit of error (eV/atom, eV/Å, ...), from dataset statistics, so that
            a weight of one means the same for each term.
    """

    name: str = ""
    required_labels: tuple[str, ...] = ()
    requires_position_grad: bool = False

    def __init__(self, reduction: Reduction = "mean", scale: float = 1.0) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"loss '{self.name}': unknown reduction '{reduction}': expected mean, sum or none")
        if not scale > 0:
            raise ValueError(f"loss '{self.name}': scale must be positive, got {scale}")
        self.reduction, self.scale = reduction, float(scale)

    @classmethod
    def from_config(cls, options: dict[str, Any], scale: float, model: nn.Module | None) -> LossTerm:
        """The term from its config options, its dataset ``scale`` and, for terms that need
        it, the student model."""
        return cls(scale=scale, **options)

    def reduce(self, per_entry: Tensor) -> Tensor:
        return reduce_entries(per_entry, self.reduction)

    def label(self, batch, key: str) -> Tensor:
        """``batch.<key>``, with an error naming the term when the batch lacks it."""
        if key not in batch:
            raise KeyError(f"loss '{self.name}' needs batch.{key}, which this batch does not carry")
        return batch[key]

    def check_finite(
        self, values: Tensor, structure_of_row: Tensor, batch, what: str, considered: Tensor | None = None
    ) -> None:
        """Raise :class:`NonFiniteLossError` naming the structures whose rows of ``values`` (R, ...)
        hold NaN or Inf, looking only at the entries where ``considered`` (shape of ``values``,
        or (R,)) is True."""
        bad = ~torch.isfinite(values)
        if considered is not None:
            bad = bad & (broadcast_rows(considered, values) if considered.dim() == 1 else considered)
        if not bool(bad.any()):
            return
        bad_rows = bad.reshape(len(values), -1).any(dim=1)
        positions = torch.unique(structure_of_row[bad_rows])
        ids = batch.structure_id[positions] if "structure_id" in batch else positions
        raise NonFiniteLossError(
            f"loss '{self.name}': {what} is NaN or Inf in the structure(s) at batch position(s) "
            f"{positions.tolist()} (dataset structure_id {ids.tolist()})"
        )

    def check_labels(self, labels: Tensor, structure_of_row: Tensor, batch, what: str) -> None:
        """A missing label is NaN; an infinite one is a broken data set, not a missing value."""
        self.check_finite(labels, structure_of_row, batch, what, considered=~torch.isnan(labels))
