"""Feature matching: a student layer's node features against a teacher layer's, through a
learnable equivariant projection."""

from __future__ import annotations

from typing import Any, Literal, Mapping

from e3nn import o3
from torch import Tensor, nn

from mlip_distill.losses.base import LossTerm, Reduction, row_weights

FeatureKind = Literal["mse", "cosine"]


class FeatureMatchingLoss(LossTerm):
    """Distance between projected student node features and the teacher's, one entry per atom.

    ``entry_i = mean_c ((P s_i − t_i)_c / scale)²`` (``mse``) or ``1 − cos(P s_i, t_i)``
    (``cosine``), with ``s_i`` the student's features of atom ``i`` in layer ``student_layer``
    (``prediction['node_features'][student_layer]``, (N, F_s)), ``t_i`` the teacher's
    (``batch.features_<teacher_layer>``, (N, F_t); atoms whose row holds NaN are dropped) and
    ``P`` an e3nn :class:`~e3nn.o3.Linear` from the student's irreps to the teacher's. ``P`` mixes
    only channels of equal rotation order and parity, so ``P`` commutes with rotations: for
    invariant features (all ``0e``) it is an ordinary linear map; for equivariant ones the loss is
    unchanged when the structure is rotated, since Wigner D matrices are orthogonal and leave both
    the error's length and the cosine unchanged. Features are dimensionless or in the teacher's
    own units; ``scale`` is the RMS of a teacher feature component (``mse`` only).

    ``P`` is a parameter of this loss: it trains with the student (the optimiser must include
    the loss's parameters) and is never part of the exported potential.

    Feature distillation for interatomic potentials: Kelvinius et al., "Accelerating molecular
    graph neural networks via knowledge distillation", NeurIPS 2023.

    Args:
        student_layer: key of the student's ``node_features``.
        teacher_layer: name of the teacher layer; the batch carries ``features_<teacher_layer>``.
        student_irreps: e3nn irreps of the student layer (``model.node_feature_irreps()``).
        teacher_irreps: e3nn irreps of the teacher layer (the label file's attribute); each of its
            irreps must occur in the student layer, which could otherwise never match it.
        kind: ``mse`` or ``cosine``.
        reduction, scale: see :class:`~mlip_distill.losses.base.LossTerm`.
    """

    name = "features"

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        student_irreps: str,
        teacher_irreps: str,
        kind: FeatureKind = "mse",
        reduction: Reduction = "mean",
        scale: float = 1.0,
    ) -> None:
        super().__init__(reduction, scale)
        if kind not in ("mse", "cosine"):
            raise ValueError(f"loss '{self.name}': unknown kind '{kind}': expected mse or cosine")
        self.student_layer, self.teacher_layer, self.kind = student_layer, teacher_layer, kind
        self.student_irreps, self.teacher_irreps = o3.Irreps(student_irreps), o3.Irreps(teacher_irreps)
        unmatched = sorted({str(irrep) for _, irrep in self.teacher_irreps if irrep not in self.student_irreps})
        if unmatched:
            raise ValueError(
                f"loss '{self.name}': the teacher layer '{teacher_layer}' has irreps {', '.join(unmatched)} "
                f"that the student layer '{student_layer}' ({self.student_irreps}) lacks; choose a student "
                "layer or l_max that has them"
            )
        self.required_labels = (f"features_{teacher_layer}",)
        self.projection: nn.Module = o3.Linear(self.student_irreps, self.teacher_irreps)

    @classmethod
    def from_config(cls, options: dict[str, Any], scale: float, model: nn.Module | None) -> FeatureMatchingLoss:
        """``student_irreps`` defaults to the model's irreps of ``student_layer``."""
        if options.get("student_irreps") is None and model is not None:
            layers = model.node_feature_irreps()
            layer = options.get("student_layer")
            if layer not in layers:
                raise ValueError(f"loss '{cls.name}': student_layer '{layer}' is not one of {', '.join(layers)}")
            options = {**options, "student_irreps": layers[layer]}
        return cls(scale=scale, **options)

    def forward(self, prediction: Mapping[str, Tensor], batch) -> Tensor:
        available = prediction["node_features"]
        if self.student_layer not in available:
            raise KeyError(
                f"loss '{self.name}': the student has no node features '{self.student_layer}' "
                f"(it has {', '.join(available) or 'none'})"
            )
        student, teacher = available[self.student_layer], self.label(batch, self.required_labels[0])
        sides = (("student", student, self.student_irreps), ("teacher", teacher, self.teacher_irreps))
        for side, features, irreps in sides:
            if features.shape[-1] != irreps.dim:
                raise ValueError(
                    f"loss '{self.name}': {side} features have {features.shape[-1]} components, "
                    f"but their irreps {irreps} have {irreps.dim}"
                )
        rows = batch.batch
        weight, kept = row_weights(batch, True, student.dtype)
        self.check_labels(teacher, rows, batch, f"the teacher's features '{self.teacher_layer}'")
        valid = kept & ~teacher.isnan().any(dim=1)
        self.check_finite(student, rows, batch, f"the student's features '{self.student_layer}'", considered=valid)
        projected = self.projection(student[valid])
        target = teacher[valid].to(projected.dtype)
        if self.kind == "mse":
            per_atom = ((projected - target) / self.scale).square().mean(dim=1)
        else:
            per_atom = 1.0 - nn.functional.cosine_similarity(projected, target, dim=1)
        per_atom = per_atom * weight[valid]
        self.check_finite(per_atom, rows[valid], batch, "the loss")
        return self.reduce(per_atom)
