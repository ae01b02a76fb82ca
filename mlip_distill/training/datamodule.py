"""The LightningDataModule: a label file split into training and validation graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DistributedSampler, Subset
from torch_geometric.loader import DataLoader

from ..data.dataset import GraphDataset, split_indices
from ..data.errors import DataError
from ..data.sampler import AtomBudgetBatchSampler, SystemBatchSampler
from ..data.stats import DatasetStatistics, compute_statistics
from ..data.store import LabelStore


class LabelFileDataModule(pl.LightningDataModule):
    """Training and validation graphs from one label source of a label file.

    Args:
        path: the HDF5 label file.
        source: label source to learn (``teacher``, ``reference`` or a teacher's name).
        cutoff: neighbour cutoff in Å (the student's).
        n_valid / valid_fraction: size of the held-out split (``n_valid`` wins when set).
        require: labels a structure must have to be used.
        cache: read the neighbour lists from the graph cache beside the label file (built there
            once, :mod:`~mlip_distill.data.graph_cache`) instead of building them for every
            item; either way nothing of the whole dataset is held in memory.
        features / hessian: teacher feature layers and Hessian-vector products to load.
        valid_indices: store indices to hold out, instead of a random split; keeps the
            validation set fixed while the label file grows (on-policy rounds).
        conformers_per_system: when set, training batches hold this many structures of one
            system at a time (:class:`~mlip_distill.data.sampler.SystemBatchSampler`), for
            losses that compare conformers.
        max_atoms_per_batch: when set, training batches are filled up to this many atoms
            (:class:`~mlip_distill.data.sampler.AtomBudgetBatchSampler`) instead of holding
            ``batch_size`` structures, to keep memory flat when structure sizes vary.
        num_workers: loader processes (0: load in the training process); each is seeded from
            ``seed_everything(seed, workers=True)``.
        pin_memory: page-locked batches, for faster copies to a GPU.
        persistent_workers: keep the loader processes between epochs (with ``num_workers > 0``).
        shuffle_seed: seed of the training order (default ``seed``); the training run passes its
            own seed, so students that differ only in seed also see different batches.

    While a Lightning trainer runs, each data-parallel process loads its own share of the
    batches (so the trainer needs ``use_distributed_sampler=False``); the training order comes
    from ``shuffle_seed`` and the epoch, so one process and several step through the same global batches.
    """

    def __init__(
        self,
        path: str | Path,
        source: str,
        cutoff: float,
        batch_size: int = 8,
        valid_batch_size: int | None = None,
        n_valid: int | None = None,
        valid_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        require: tuple[str, ...] = ("energy", "forces"),
        cache: bool = True,
        dtype: torch.dtype = torch.float32,
        features: tuple[str, ...] = (),
        hessian: bool = False,
        conformers_per_system: int = 0,
        valid_indices: list[int] | None = None,
        max_atoms_per_batch: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.source = source
        self.cutoff = float(cutoff)
        self.batch_size = batch_size
        self.valid_batch_size = valid_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.conformers_per_system = conformers_per_system
        self.max_atoms_per_batch = max_atoms_per_batch
        if max_atoms_per_batch and conformers_per_system:
            raise DataError("data.max_atoms_per_batch and data.conformers_per_system cannot both be set")
        self.seed = seed if shuffle_seed is None else shuffle_seed
        dataset = GraphDataset(
            self.path, source, self.cutoff, require=tuple(require), graph_cache=cache, dtype=dtype,
            features=tuple(features), hessian=hessian,
        )
        self.dataset = dataset
        if valid_indices is not None:
            held_out = np.isin(dataset.indices, valid_indices)
            train, valid = np.flatnonzero(~held_out), np.flatnonzero(held_out)
            if len(valid) != len(set(valid_indices)):
                raise DataError(f"{self.path}: data.valid_indices names structures that are not in the usable data")
        elif n_valid is not None:
            train, valid = split_indices(len(dataset), n_valid=n_valid, seed=seed)
        else:
            train, valid = split_indices(len(dataset), valid_fraction=valid_fraction, seed=seed)
        self.train_set, self.valid_set = Subset(dataset, train), Subset(dataset, valid)
        self.train_store_indices = [int(dataset.indices[i]) for i in train]
        self.valid_store_indices = [int(dataset.indices[i]) for i in valid]
        if max_atoms_per_batch:
            n_atoms = self.training_values("n_atoms")
            largest = int(np.argmax(n_atoms))
            if n_atoms[largest] > max_atoms_per_batch:
                raise DataError(
                    f"{self.path}: data.max_atoms_per_batch={max_atoms_per_batch} is smaller than structure "
                    f"{self.train_store_indices[largest]} ({n_atoms[largest]} atoms)"
                )

    def statistics(self, e0_from: str = "isolated") -> DatasetStatistics:
        """E0s, scales and neighbour counts of the training split (never the validation split).

        ``e0_from``: ``isolated`` (the teacher's isolated-atom energies) or ``fit`` (least squares).
        """
        return compute_statistics(self.path, self.source, self.cutoff, self.train_store_indices, e0_from)

    def label_rms(self, key: str) -> float | None:
        """RMS over the training split of a label's finite entries, or None without any.

        ``key``: ``stress`` (eV/Å³), ``hvp_hv`` (eV/Å²) or ``features/<layer>``.
        """
        layer = key.removeprefix("features/") if key.startswith("features/") else None
        values = []
        with LabelStore(self.path) as store:
            for index in self.train_store_indices:
                labels = store.labels(self.source, index, features=(layer,) if layer else (), hessian=key == "hvp_hv")
                values.append(np.ravel(labels["features"][layer] if layer else labels[key]))
        values = np.concatenate(values)
        values = values[np.isfinite(values)]
        return float(np.sqrt(np.mean(values**2))) if values.size else None

    def _loader(self, subset: Subset, **batching: Any) -> DataLoader:
        return DataLoader(subset, num_workers=self.num_workers, persistent_workers=self.persistent_workers,
                          pin_memory=self.pin_memory, **batching)

    def _processes(self) -> dict[str, int]:
        """``num_replicas`` and ``rank`` of this data-parallel process while a trainer runs a
        stage; one process otherwise (evaluation after training sees all the data)."""
        trainer = self.trainer
        if trainer is None or trainer.state.stage is None:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}

    def training_values(self, key: str) -> list[int]:
        """``system_id`` or ``n_atoms`` of each training structure, in training-set order."""
        arrays = (self.dataset.store.arrays(i) for i in self.train_store_indices)
        return [len(a["numbers"]) if key == "n_atoms" else a[key] for a in arrays]

    def train_dataloader(self) -> DataLoader:
        processes = self._processes()
        if self.max_atoms_per_batch:
            n_atoms = self.training_values("n_atoms")
            sampler = AtomBudgetBatchSampler(n_atoms, self.max_atoms_per_batch, seed=self.seed, **processes)
            return self._loader(self.train_set, batch_sampler=sampler)
        if self.conformers_per_system:
            system_ids = self.training_values("system_id")
            sampler = SystemBatchSampler(system_ids, self.batch_size, self.conformers_per_system, seed=self.seed, **processes)
            return self._loader(self.train_set, batch_sampler=sampler)
        shuffled = DistributedSampler(self.train_set, shuffle=True, seed=self.seed, **processes)
        return self._loader(self.train_set, batch_size=self.batch_size, sampler=shuffled)

    def val_dataloader(self) -> DataLoader:
        in_order = DistributedSampler(self.valid_set, shuffle=False, **self._processes())
        return self._loader(self.valid_set, batch_size=self.valid_batch_size, sampler=in_order)

    def describe(self) -> dict[str, Any]:
        """What the run was trained on, for the potential's metadata."""
        return {
            "path": str(self.path.resolve()),
            "source": self.source,
            "n_train": len(self.train_set),
            "n_valid": len(self.valid_set),
        }
