"""The system-grouping batch sampler: every item once per epoch, conformers of a system together,
a fixed batch count, seeded reshuffling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mlip_distill.data.sampler import SystemBatchSampler

# 9 systems of 1 to 9 conformers, interleaved as a label file would hold them
SYSTEM_IDS = np.random.default_rng(0).permutation(np.repeat(np.arange(9), np.arange(1, 10))).tolist()


def epochs(sampler: SystemBatchSampler, count: int) -> list[list[list[int]]]:
    return [list(sampler) for _ in range(count)]


@pytest.mark.parametrize("batch_size, conformers", [(8, 2), (6, 3), (5, 5), (4, 1)])
def test_every_item_once_per_epoch_and_systems_grouped(batch_size, conformers):
    sampler = SystemBatchSampler(SYSTEM_IDS, batch_size, conformers, seed=3)
    for batches in epochs(sampler, 3):
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(SYSTEM_IDS)))
        assert all(1 <= len(batch) <= batch_size for batch in batches)
        for batch in batches:
            for system, members in Counter(SYSTEM_IDS[i] for i in batch).items():
                available = SYSTEM_IDS.count(system)
                # a system larger than a batch is cut into near-equal groups that fit one
                assert members >= min(conformers, available // -(-available // batch_size))


def test_batches_are_packed_tightly():
    sampler = SystemBatchSampler(SYSTEM_IDS, batch_size=8, conformers_per_system=2)
    assert len(sampler) == int(np.ceil(len(SYSTEM_IDS) / 8))


def test_seeded_reshuffling():
    first, second = SystemBatchSampler(SYSTEM_IDS, 8, seed=1), SystemBatchSampler(SYSTEM_IDS, 8, seed=1)
    epochs_first = epochs(first, 2)
    assert epochs_first == epochs(second, 2)
    assert epochs_first[0] != epochs_first[1]
    assert epochs_first[0] != list(SystemBatchSampler(SYSTEM_IDS, 8, seed=2))
    first.set_epoch(1)
    assert list(first) == epochs_first[1]
    fixed = SystemBatchSampler(SYSTEM_IDS, 8, shuffle=False)
    assert list(fixed) == list(fixed)


def test_works_as_a_dataloader_batch_sampler():
    dataset = torch.arange(len(SYSTEM_IDS))
    loader = DataLoader(dataset, batch_sampler=SystemBatchSampler(SYSTEM_IDS, 8))
    assert sorted(torch.cat(list(loader)).tolist()) == list(range(len(SYSTEM_IDS)))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        SystemBatchSampler(SYSTEM_IDS, 0)
    with pytest.raises(ValueError, match="conformers_per_system must be between 1 and batch_size"):
        SystemBatchSampler(SYSTEM_IDS, 4, conformers_per_system=5)
