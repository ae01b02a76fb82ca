"""The graph cache beside a label file: same graphs as built ones, rebuilt when stale or damaged."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.cluster import Icosahedron
from ase.calculators.emt import EMT
from torch_geometric.loader import DataLoader

from mlip_distill.data import graph_cache as graph_cache_module
from mlip_distill.data.dataset import GraphDataset
from mlip_distill.data.graph_cache import GraphCache, graph_cache_path
from mlip_distill.data.io import labels_from_atoms
from mlip_distill.data.store import LabelStore
from mlip_distill.training.datamodule import LabelFileDataModule

CUTOFF = 4.0


def emt_structures(seed: int = 0) -> list:
    """Rattled periodic Cu cells of 4, 8 and 32 atoms and a non-periodic 13-atom cluster, with
    EMT labels."""
    rng = np.random.default_rng(seed)
    cubic = bulk("Cu", "fcc", a=3.61, cubic=True)
    frames = [cubic.copy(), cubic.repeat((2, 1, 1)), cubic.repeat((2, 2, 2)), Icosahedron("Cu", 2)]
    frames[3].center(vacuum=3.0)
    for atoms in frames:
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
    frames[1].positions[0] += 3 * frames[1].cell[0]  # unwrapped: shifts other than -1, 0, 1
    return frames


def write_labels(path, frames) -> None:
    with LabelStore(path, "a") as store:
        store.set_labels("teacher", store.append(frames), [labels_from_atoms(a) for a in frames])


@pytest.fixture
def label_path(tmp_path):
    path = tmp_path / "labels.h5"
    write_labels(path, emt_structures())
    return path


def edge_set(graph) -> set[tuple]:
    rows = torch.cat([graph.edge_index.T.double(), graph.cell_shifts.double()], dim=1)
    return set(map(tuple, rows.tolist()))


def test_graphs_from_the_cache_equal_built_graphs(label_path):
    cached = GraphDataset(label_path, "teacher", CUTOFF, dtype=torch.float64, graph_cache=True)
    built = GraphDataset(label_path, "teacher", CUTOFF, dtype=torch.float64)
    assert graph_cache_path(label_path, CUTOFF).exists()
    assert not cached[3].pbc.any() and cached[0].pbc.all()
    for k in range(len(built)):
        graph, expected = cached[k], built[k]
        assert edge_set(graph) == edge_set(expected) and graph.edge_index.shape[1] > 0
        assert sorted(graph.keys()) == sorted(expected.keys())
        assert graph.num_nodes == expected.num_nodes
        for key in set(expected.keys()) - {"num_nodes"}:
            torch.testing.assert_close(graph[key], expected[key], rtol=0, atol=0, equal_nan=True)
    assert cached[1].cell_shifts.abs().max() >= 3


def test_a_cache_is_built_once_and_reused(label_path, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="mlip_distill.data.graph_cache"):
        GraphDataset(label_path, "teacher", CUTOFF, graph_cache=True)
    assert len(caplog.records) == 1 and "graph cache absent; built the neighbour lists" in caplog.text
    monkeypatch.setattr(graph_cache_module, "neighbour_list", None)  # building would now fail
    caplog.clear()
    dataset = GraphDataset(label_path, "teacher", CUTOFF, graph_cache=True)
    assert not caplog.records and dataset[2].edge_index.shape[1] > 0


def rebuilt(label_path, caplog, cutoff=CUTOFF, path=None, level=logging.INFO) -> GraphCache:
    """The cache, after checking that opening it logged one line: that it was rebuilt."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlip_distill.data.graph_cache"):
        cache = GraphCache(label_path, cutoff, path)
    assert len(caplog.records) == 1 and caplog.records[0].levelno == level
    assert "; built the neighbour lists of" in caplog.text
    assert "\n" not in caplog.text.strip()
    return cache


def test_a_cache_of_another_label_file_content_is_rebuilt(label_path, tmp_path, caplog):
    GraphCache(label_path, CUTOFF)
    moved = emt_structures(seed=1)  # same counts, other positions
    (tmp_path / "labels.h5").unlink()
    write_labels(label_path, moved)
    cache = rebuilt(label_path, caplog)
    assert "label file changed" in caplog.text
    built = GraphDataset(label_path, "teacher", CUTOFF)
    for k in range(len(moved)):
        edge_index, shifts = cache.edges(k)
        np.testing.assert_array_equal(edge_index, built[k].edge_index.numpy())
        np.testing.assert_array_equal(shifts, built[k].cell_shifts.numpy())
    with LabelStore(label_path, "a") as store:  # a structure appended
        store.append(moved[:1])
    assert len(rebuilt(label_path, caplog)) == len(moved) + 1


def test_a_cache_of_another_cutoff_is_never_used(label_path, caplog):
    assert graph_cache_path(label_path, 4.0) != graph_cache_path(label_path, 5.0)
    path = graph_cache_path(label_path, CUTOFF)
    GraphCache(label_path, CUTOFF)
    cache = rebuilt(label_path, caplog, cutoff=CUTOFF + 1e-9, path=path)
    assert f"not {CUTOFF + 1e-9} Å" in caplog.text
    with h5py.File(path) as f:
        assert f.attrs["cutoff"] == CUTOFF + 1e-9
    assert len(cache) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip_data_bytes", "drop_dataset"])
def test_a_damaged_cache_is_rebuilt_not_trusted(label_path, caplog, damage):
    path = graph_cache_path(label_path, CUTOFF)
    expected = [GraphCache(label_path, CUTOFF).edges(k) for k in range(4)]
    if damage == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    elif damage == "flip_data_bytes":
        with h5py.File(path) as f:
            start = f["cell_shifts"].id.get_chunk_info(0).byte_offset
        with open(path, "r+b") as handle:
            handle.seek(start + 10)
            handle.write(b"\x55\x66\x77")
    else:
        with h5py.File(path, "a") as f:
            del f["cell_shifts"]
    cache = rebuilt(label_path, caplog, level=logging.WARNING)
    assert "unreadable" in caplog.text
    for k, (edge_index, shifts) in enumerate(expected):
        np.testing.assert_array_equal(cache.edges(k)[0], edge_index)
        np.testing.assert_array_equal(cache.edges(k)[1], shifts)


def test_an_interrupted_build_leaves_no_cache(label_path, monkeypatch):
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return neighbour_list(*args)

    neighbour_list = graph_cache_module.neighbour_list
    monkeypatch.setattr(graph_cache_module, "neighbour_list", failing)
    with pytest.raises(KeyboardInterrupt):
        GraphCache(label_path, CUTOFF)
    assert sorted(p.name for p in label_path.parent.iterdir()) == ["labels.h5"]


def test_without_a_writable_place_graphs_are_built_per_item(label_path, monkeypatch, caplog):
    def refuse(*args):
        raise PermissionError("read-only directory")

    monkeypatch.setattr(graph_cache_module, "build_graph_cache", refuse)
    with caplog.at_level(logging.WARNING):
        dataset = GraphDataset(label_path, "teacher", CUTOFF, graph_cache=True)
    assert dataset.graph_cache is None and "built per item instead" in caplog.text
    assert dataset[0].edge_index.shape[1] > 0


def test_loader_workers_read_the_cache(label_path):
    dataset = GraphDataset(label_path, "teacher", CUTOFF, graph_cache=True)
    in_process = next(iter(DataLoader(dataset, batch_size=4)))
    in_workers = next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))
    assert torch.equal(in_process.edge_index, in_workers.edge_index)
    assert torch.equal(in_process.cell_shifts, in_workers.cell_shifts)


def test_the_datamodule_reads_edges_from_the_cache_and_keeps_no_graphs(label_path):
    data = LabelFileDataModule(label_path, "teacher", CUTOFF, batch_size=2, n_valid=1)
    assert data.dataset.graph_cache is not None and data.dataset._cache is None
    assert graph_cache_path(label_path, CUTOFF).exists()
    batch = next(iter(data.train_dataloader()))
    assert batch.num_graphs == 2
    plain = LabelFileDataModule(label_path, "teacher", CUTOFF, n_valid=1, cache=False)
    assert plain.dataset.graph_cache is None
