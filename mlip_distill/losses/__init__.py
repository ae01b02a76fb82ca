"""Loss terms, each an ``nn.Module`` with one job, combined with weights by :class:`TotalLoss`.

=========================  ==================================================  ===============
module                     terms                                               config name
=========================  ==================================================  ===============
:mod:`.labels`             :class:`EnergyPerAtomLoss`, :class:`ForcesLoss`,    energy, forces,
                           :class:`StressLoss`, :class:`AtomicEnergiesLoss`    stress,
                                                                               atomic_energies
:mod:`.features`           :class:`FeatureMatchingLoss`                        features
:mod:`.hessian`            :class:`HessianLoss`                                hessian
:mod:`.soft_targets`       :class:`BoltzmannKLLoss`, :class:`SoftTargetKL`     boltzmann_kl
=========================  ==================================================  ===============

The contract, masks, weights, reductions and their data-parallel normalisation are described in
:mod:`.base`; :func:`build_loss` builds a :class:`TotalLoss` from a config mapping.
"""

from mlip_distill.losses.base import LossTerm, NonFiniteLossError, Reduction
from mlip_distill.losses.features import FeatureMatchingLoss
from mlip_distill.losses.hessian import HessianLoss, hessian_vector_products
from mlip_distill.losses.labels import AtomicEnergiesLoss, EnergyPerAtomLoss, ForcesLoss, LabelLoss, StressLoss
from mlip_distill.losses.soft_targets import ROOM_TEMPERATURE_ENERGY, BoltzmannKLLoss, SoftTargetKL
from mlip_distill.losses.total import TERMS, TotalLoss, build_loss

__all__ = [
    "ROOM_TEMPERATURE_ENERGY",
    "TERMS",
    "AtomicEnergiesLoss",
    "BoltzmannKLLoss",
    "EnergyPerAtomLoss",
    "FeatureMatchingLoss",
    "ForcesLoss",
    "HessianLoss",
    "LabelLoss",
    "LossTerm",
    "NonFiniteLossError",
    "Reduction",
    "SoftTargetKL",
    "StressLoss",
    "TotalLoss",
    "build_loss",
    "hessian_vector_products",
]
