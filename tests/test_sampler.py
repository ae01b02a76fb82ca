"""The batch samplers: every item once per epoch, conformers of a system together or batches within
an atom budget, a fixed batch count, seeded reshuffling, and the split among data-parallel
processes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mlip_distill.data.sampler import AtomBudgetBatchSampler, SystemBatchSampler, share_of_rank

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


# 60 structures of 1 to 40 atoms, sizes repeating (as rattled copies of a few seeds do)
N_ATOMS = np.random.default_rng(1).choice([1, 3, 8, 12, 27, 32, 40], size=60).tolist()


@pytest.mark.parametrize("budget", [40, 64, 100])
def test_atom_budget_is_kept_and_every_structure_appears_once(budget):
    sampler = AtomBudgetBatchSampler(N_ATOMS, budget, seed=5)
    lower_bound = -(-sum(N_ATOMS) // budget)
    for batches in epochs(sampler, 3):
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(N_ATOMS)))
        assert max(sum(N_ATOMS[i] for i in batch) for batch in batches) <= budget
    # best-fit packing wastes little room: at most a tenth more batches than a perfect packing
    assert len(sampler) <= 1.1 * lower_bound + 1


def test_atom_budget_batches_are_seeded_and_reshuffled():
    first, second = AtomBudgetBatchSampler(N_ATOMS, 64, seed=1), AtomBudgetBatchSampler(N_ATOMS, 64, seed=1)
    epochs_first = epochs(first, 2)
    assert epochs_first == epochs(second, 2)
    assert epochs_first[0] != epochs_first[1]
    membership = [sorted(map(sorted, batches)) for batches in epochs_first]
    assert membership[0] != membership[1]  # equal-sized structures trade batches, not only the order changes
    assert epochs_first[0] != list(AtomBudgetBatchSampler(N_ATOMS, 64, seed=2))
    first.set_epoch(1)
    assert list(first) == epochs_first[1]
    fixed = AtomBudgetBatchSampler(N_ATOMS, 64, shuffle=False)
    assert list(fixed) == list(fixed)


def test_a_structure_larger_than_the_budget_is_refused():
    with pytest.raises(ValueError, match=r"max_atoms_per_batch 30 is smaller than structure \d+ \(\d+ atoms\)"):
        AtomBudgetBatchSampler(N_ATOMS, 30)


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize(
    "make", [lambda **kw: AtomBudgetBatchSampler(N_ATOMS, 64, seed=4, **kw), lambda **kw: SystemBatchSampler(SYSTEM_IDS, 6, 2, seed=4, **kw)]
)
def test_processes_share_an_epoch_without_repeats(make, replicas):
    """Data-parallel processes step equally often and together see every structure once."""
    whole = list(make())
    shares = [list(make(num_replicas=replicas, rank=rank)) for rank in range(replicas)]
    assert {len(share) for share in shares} == {len(make(num_replicas=replicas, rank=0))}
    seen = sorted(i for share in shares for batch in share for i in batch)
    assert seen == sorted(i for batch in whole for i in batch)


def test_share_of_rank_halves_the_largest_batch_until_counts_match():
    batches = [[0, 1, 2, 3], [4], [5, 6]]
    assert share_of_rank(batches, 2, 0) == [[0, 1], [4]]
    assert share_of_rank(batches, 2, 1) == [[2, 3], [5, 6]]
    with pytest.raises(ValueError, match="3 structures cannot be shared among 4 processes"):
        share_of_rank([[0], [1], [2]], 4, 0)


def test_data_module_batches_by_atom_count(tmp_path):
    """``data.max_atoms_per_batch``: training batches of mixed-size cells stay within the budget."""
    from conftest import emt_copper_cells, write_label_file

    from mlip_distill.data.errors import DataError
    from mlip_distill.training.datamodule import LabelFileDataModule

    cells = [cell for repeat in ((1, 1, 1), (2, 1, 1), (2, 2, 1)) for cell in emt_copper_cells(6, repeat=repeat)]
    path = write_label_file(tmp_path / "mixed.h5", cells)
    data = LabelFileDataModule(path, "teacher", cutoff=4.0, n_valid=3, max_atoms_per_batch=24)
    batches = list(data.train_dataloader())
    assert max(int(batch.n_atoms.sum()) for batch in batches) <= 24
    seen = sorted(int(i) for batch in batches for i in batch.structure_id)
    assert seen == sorted(data.train_store_indices)
    largest = max(data.train_store_indices, key=lambda i: len(cells[i]))
    with pytest.raises(DataError, match=rf"max_atoms_per_batch=12 is smaller than structure {largest} \(16 atoms\)"):
        LabelFileDataModule(path, "teacher", cutoff=4.0, n_valid=3, max_atoms_per_batch=12)


@pytest.mark.parametrize(
    "make", [lambda: AtomBudgetBatchSampler(N_ATOMS, 64, seed=4), lambda: SystemBatchSampler(SYSTEM_IDS, 6, 2, seed=4)]
)
def test_lightning_sets_the_epoch_of_the_batch_samplers(make):
    """Lightning calls ``set_epoch`` on ``batch_sampler.sampler``: a run resumed in epoch 3 draws epoch 3's batches."""
    from lightning_fabric.utilities.data import _set_sampler_epoch

    expected = epochs(make(), 4)[3]
    resumed = make()
    _set_sampler_epoch(DataLoader(torch.arange(100), batch_sampler=resumed), 3)
    assert list(resumed) == expected
