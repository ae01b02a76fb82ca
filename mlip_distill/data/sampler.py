"""A batch sampler that keeps conformers of one system together, for ensemble losses."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class SystemBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions in which several conformers of one system sit together.

    A loss over the conformers of a system (the Boltzmann KL of
    :class:`~mlip_distill.losses.BoltzmannKLLoss`) sees only the conformers that share a batch,
    so a plain shuffle, which scatters them, would leave it with nothing to compare. Each epoch,
    every system's structures are shuffled and cut into near-equal groups of
    ``conformers_per_system`` to twice that (a smaller system stays whole; no group exceeds
    ``batch_size``, so with ``batch_size < 2 · conformers_per_system − 1`` a group can fall
    short), and the groups are packed into batches of at most ``batch_size`` structures, best
    fit. Every position appears exactly once per epoch. The packing layout
    depends only on the group sizes, so the number of batches is the same every epoch; which
    systems share a batch and the order of the batches change with the epoch.

    Use it as ``DataLoader(dataset, batch_sampler=SystemBatchSampler(...))``. Each iteration
    starts a new epoch; :meth:`set_epoch` sets it explicitly (for resuming or several workers).

    Args:
        system_ids: the ``system_id`` of each dataset item, in dataset order.
        batch_size: most structures in a batch.
        conformers_per_system: structures of one system that go into a batch together, ≥ 1
            (≥ 2 for an ensemble loss) and ≤ ``batch_size``.
        shuffle: reshuffle every epoch; without it the batches are the same every epoch.
        seed: seed of the shuffling; epoch ``e`` of seed ``s`` is always the same.
    """

    def __init__(
        self,
        system_ids: Sequence[int],
        batch_size: int,
        conformers_per_system: int = 2,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 1 <= conformers_per_system <= batch_size:
            raise ValueError(
                f"conformers_per_system must be between 1 and batch_size ({batch_size}), got {conformers_per_system}"
            )
        self.batch_size, self.conformers_per_system = int(batch_size), int(conformers_per_system)
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), 0
        positions_of_system: dict[int, list[int]] = defaultdict(list)
        for position, system in enumerate(np.asarray(system_ids, dtype=np.int64).tolist()):
            positions_of_system[system].append(position)
        self.systems = [np.array(positions) for _, positions in sorted(positions_of_system.items())]
        self.group_sizes = [self._group_sizes(len(positions)) for positions in self.systems]
        self.layout = self._pack([size for sizes in self.group_sizes for size in sizes])

    def _group_sizes(self, count: int) -> list[int]:
        """Near-equal group sizes that add up to ``count``, each at most ``batch_size``."""
        groups = max(1, count // self.conformers_per_system, -(-count // self.batch_size))
        smaller, larger = divmod(count, groups)
        return [smaller + 1] * larger + [smaller] * (groups - larger)

    def _pack(self, sizes: list[int]) -> list[list[int]]:
        """Group sizes of each batch: best fit, largest groups first."""
        batches: list[list[int]] = []
        batches_with_room: dict[int, list[int]] = defaultdict(list)
        for size in sorted(sizes, reverse=True):
            room = next((r for r in range(size, self.batch_size) if batches_with_room[r]), None)
            if room is None:
                batches.append([])
                index = len(batches) - 1
                room = self.batch_size
            else:
                index = batches_with_room[room].pop()
            batches[index].append(size)
            if room - size > 0:
                batches_with_room[room - size].append(index)
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.layout)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        groups_of_size: dict[int, list[np.ndarray]] = defaultdict(list)
        for positions, sizes in zip(self.systems, self.group_sizes):
            if self.shuffle:
                positions = rng.permutation(positions)
            for group in np.split(positions, np.cumsum(sizes)[:-1]):
                groups_of_size[len(group)].append(group)
        if self.shuffle:
            for groups in groups_of_size.values():
                rng.shuffle(groups)
        batches = [np.concatenate([groups_of_size[size].pop() for size in sizes]).tolist() for sizes in self.layout]
        order = rng.permutation(len(batches)) if self.shuffle else range(len(batches))
        for index in order:
            yield batches[index]
