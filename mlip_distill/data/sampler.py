"""Batch samplers: conformers of one system together (ensemble losses), or batches filled up to
an atom budget (flat memory when structure sizes vary). Both split their batches among
data-parallel processes themselves (:func:`share_of_rank`)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class _EpochBatchSampler(Sampler[list[int]]):
    """A batch sampler whose batches depend on the epoch it is told."""

    epoch: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def sampler(self) -> Sampler[list[int]]:
        """Itself: Lightning sets the epoch of ``batch_sampler.sampler`` before every epoch, and
        a run resumed from a checkpoint must draw the batches of the epoch it resumes in."""
        return self


class SystemBatchSampler(_EpochBatchSampler):
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
    Under data parallelism every process builds the same batches and takes its share
    (:func:`share_of_rank`).

    Args:
        system_ids: the ``system_id`` of each dataset item, in dataset order.
        batch_size: most structures in a batch.
        conformers_per_system: structures of one system that go into a batch together, ≥ 1
            (≥ 2 for an ensemble loss) and ≤ ``batch_size``.
        shuffle: reshuffle every epoch; without it the batches are the same every epoch.
        seed: seed of the shuffling; epoch ``e`` of seed ``s`` is always the same.
        num_replicas, rank: data-parallel processes and this one's rank.
    """

    def __init__(
        self,
        system_ids: Sequence[int],
        batch_size: int,
        conformers_per_system: int = 2,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 1 <= conformers_per_system <= batch_size:
            raise ValueError(
                f"conformers_per_system must be between 1 and batch_size ({batch_size}), got {conformers_per_system}"
            )
        self.batch_size, self.conformers_per_system = int(batch_size), int(conformers_per_system)
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), 0
        self.num_replicas, self.rank = _check_rank(num_replicas, rank)
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

    def __len__(self) -> int:
        return _count_of_rank([sum(sizes) for sizes in self.layout], self.num_replicas)

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
        yield from share_of_rank([batches[index] for index in order], self.num_replicas, self.rank)


class AtomBudgetBatchSampler(_EpochBatchSampler):
    """Batches of dataset positions holding at most ``max_atoms`` atoms each.

    With structures of very different sizes, a fixed number of structures per batch makes the
    memory of a step swing with the sizes drawn; a budget of atoms keeps it flat. The budget
    must hold the largest structure.

    The batches are packed once, best fit with the largest structures first, so that their
    number is the same every epoch (Lightning counts the batches of an epoch in advance, and
    every data-parallel process must step equally often). Each epoch, structures of equal atom
    count trade places at random across the packing and the batches come in a new order; a
    data set in which every structure has its own size therefore keeps its batches' membership
    and changes only their order. Every position appears exactly once per epoch (over all
    processes).

    Args:
        n_atoms: atoms of each dataset item, in dataset order.
        max_atoms: most atoms in a batch.
        shuffle: reshuffle every epoch; without it the batches are the same every epoch.
        seed: seed of the shuffling; epoch ``e`` of seed ``s`` is always the same.
        num_replicas, rank: data-parallel processes and this one's rank.
    """

    def __init__(
        self,
        n_atoms: Sequence[int],
        max_atoms: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        n_atoms = np.asarray(n_atoms, dtype=np.int64)
        if len(n_atoms) == 0:
            raise ValueError("no structures to batch")
        largest = int(np.argmax(n_atoms))
        if max_atoms < n_atoms[largest]:
            raise ValueError(
                f"max_atoms_per_batch {max_atoms} is smaller than structure {largest} ({n_atoms[largest]} atoms)"
            )
        self.max_atoms, self.shuffle, self.seed, self.epoch = int(max_atoms), bool(shuffle), int(seed), 0
        self.num_replicas, self.rank = _check_rank(num_replicas, rank)
        positions_of_size: dict[int, list[int]] = defaultdict(list)
        for position, size in enumerate(n_atoms.tolist()):
            positions_of_size[size].append(position)
        self.positions_of_size = {size: np.array(positions) for size, positions in positions_of_size.items()}
        self.layout = self._pack(sorted(n_atoms.tolist(), reverse=True))

    def _pack(self, sizes: list[int]) -> list[list[int]]:
        """Atom counts of the structures of each batch: best fit, ``sizes`` in decreasing order."""
        batches: list[list[int]] = []
        rooms: list[tuple[int, int]] = []  # (room left, batch index), sorted
        for size in sizes:
            slot = bisect.bisect_left(rooms, (size, -1))
            if slot == len(rooms):
                batches.append([])
                room, index = self.max_atoms, len(batches) - 1
            else:
                room, index = rooms.pop(slot)
            batches[index].append(size)
            if room > size:
                bisect.insort(rooms, (room - size, index))
        return batches

    def __len__(self) -> int:
        return _count_of_rank([len(sizes) for sizes in self.layout], self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        pools = {
            size: (rng.permutation(positions) if self.shuffle else positions).tolist()
            for size, positions in self.positions_of_size.items()
        }
        batches = [[pools[size].pop() for size in sizes] for sizes in self.layout]
        order = rng.permutation(len(batches)) if self.shuffle else range(len(batches))
        yield from share_of_rank([batches[index] for index in order], self.num_replicas, self.rank)


def share_of_rank(batches: list[list[int]], num_replicas: int, rank: int) -> list[list[int]]:
    """The batches process ``rank`` of ``num_replicas`` trains on: every ``num_replicas``-th.

    Every process must take the same number of steps, so while the count does not divide
    evenly the largest batch is halved (a structure is never repeated or dropped, unlike
    PyTorch's ``DistributedSampler``). Every process must pass the same ``batches``.

    Raises:
        ValueError: the batches hold fewer structures than there are processes.
    """
    batches = list(batches)
    while len(batches) % num_replicas:
        largest = max(range(len(batches)), key=lambda index: len(batches[index]))
        batch = batches[largest]
        if len(batch) < 2:
            raise ValueError(f"{sum(map(len, batches))} structures cannot be shared among {num_replicas} processes")
        batches[largest : largest + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    return batches[rank::num_replicas]


def _count_of_rank(batch_lengths: list[int], num_replicas: int) -> int:
    """How many batches :func:`share_of_rank` gives each process, from the batches' lengths."""
    return len(share_of_rank([list(range(length)) for length in batch_lengths], num_replicas, 0))


def _check_rank(num_replicas: int, rank: int) -> tuple[int, int]:
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not one of {num_replicas} data-parallel processes")
    return int(num_replicas), int(rank)
