"""Graph datasets over a label store: items, label filtering, caching, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from mlip_distill.data.dataset import GraphDataset, split_indices
from mlip_distill.data.errors import DataError
from mlip_distill.data.io import labels_from_atoms
from mlip_distill.data.store import LabelStore


@pytest.fixture
def store_path(tmp_path):
    """Five rattled Cu cells with EMT labels as source 'reference'; forces only on 0, 2, 4."""
    frames, labels = [], []
    for seed in range(5):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
        label = labels_from_atoms(atoms)
        if seed % 2:
            del label["forces"]
        labels.append(label)
    path = tmp_path / "labels.h5"
    with LabelStore(path, "a") as store:
        store.set_labels("reference", store.append(frames, system_id=[3] * 5), labels)
    return path


def test_items_are_graphs_with_store_index_and_labels(store_path):
    with pytest.warns(UserWarning):
        dataset = GraphDataset(store_path, "reference", cutoff=3.0, dtype=torch.float64)
    graph = dataset[1]
    with LabelStore(store_path) as store:
        arrays, labels = store.arrays(2), store.labels("reference", 2)
    assert graph.structure_id.item() == 2 and graph.system_id.item() == 3
    np.testing.assert_array_equal(graph.pos.numpy(), arrays["positions"])
    np.testing.assert_array_equal(graph.forces.numpy(), labels["forces"])
    assert graph.edge_index.shape[1] == 4 * 12
    assert graph.pos.dtype == torch.float64


def test_structures_without_a_required_label_are_dropped_and_counted(store_path):
    with pytest.warns(UserWarning, match="2 of 5 structures lack energy or forces"):
        dataset = GraphDataset(store_path, "reference", cutoff=3.0)
    np.testing.assert_array_equal(dataset.indices, [0, 2, 4])
    assert dataset.n_dropped == 2
    energy_only = GraphDataset(store_path, "reference", cutoff=3.0, require=("energy",))
    assert len(energy_only) == 5
    assert torch.isnan(energy_only[1].forces).all()


def test_no_structure_left_is_a_one_line_error(store_path):
    with pytest.raises(DataError) as error:
        GraphDataset(store_path, "reference", cutoff=3.0, indices=[1, 3])
    assert str(error.value) == (
        f"{store_path}: no structure has energy and forces for source 'reference'"
    )
    with LabelStore(store_path, "a") as store:
        store.set_labels("teacher", [0], [{"energy": np.array(1.0)}])
    with pytest.raises(DataError) as error:
        GraphDataset(store_path, "teacher", cutoff=3.0, require=("forces",))
    assert str(error.value) == f"{store_path}: no structure has forces for source 'teacher'"


def test_cache_returns_the_built_graph(store_path):
    cached = GraphDataset(store_path, "reference", cutoff=3.0, indices=[0, 2], cache=True)
    assert cached[1] is cached[1]
    fresh = GraphDataset(store_path, "reference", cutoff=3.0, indices=[0, 2])
    assert fresh[1] is not fresh[1]
    assert torch.equal(cached[1].forces, fresh[1].forces)


def test_split_is_disjoint_complete_and_reproducible():
    train, valid = split_indices(10, valid_fraction=0.2, seed=1)
    assert len(valid) == 2 and len(train) == 8
    np.testing.assert_array_equal(np.sort(np.r_[train, valid]), np.arange(10))
    again = split_indices(10, n_valid=2, seed=1)
    np.testing.assert_array_equal(again[1], valid)
    with pytest.raises(ValueError):
        split_indices(1, valid_fraction=0.5)


def test_structure_and_system_ids_survive_batching():
    from torch_geometric.data import Batch

    from mlip_distill.data.graph import build_graph

    cell = np.eye(3) * 5.0
    graphs = [
        build_graph([29, 29], [[0, 0, 0], [1.8, 0, 0]], cell, [True] * 3, 3.0, structure_id=7 + k, system_id=k)
        for k in range(3)
    ]
    batch = Batch.from_data_list(graphs)
    assert batch.structure_id.tolist() == [7, 8, 9]
    assert batch.system_id.tolist() == [0, 1, 2]


def test_graphs_carry_requested_features_and_products_and_batch_them_along_atoms(store_path):
    from torch_geometric.loader import DataLoader

    rng = np.random.default_rng(0)
    written = [
        {
            "features": {"layer_1": rng.normal(size=(4, 4)), "layer_2": rng.normal(size=(4, 1))},
            "hvp_v": rng.normal(size=(4, 3, 3)),
            "hvp_hv": rng.normal(size=(4, 3, 3)),
        }
        for _ in range(2)
    ]
    with LabelStore(store_path, "a") as store:
        store.set_labels(
            "reference", [0, 2], written, feature_irreps={"layer_1": "1x0e+1x1o", "layer_2": "1x0e"}
        )
    plain = GraphDataset(store_path, "reference", cutoff=3.0, indices=[0, 2])
    assert "features_layer_1" not in plain[0] and "hvp_v" not in plain[0]
    dataset = GraphDataset(
        store_path, "reference", cutoff=3.0, indices=[0, 2, 4], dtype=torch.float64,
        features=("layer_1",), hessian=True,
    )
    assert dataset.feature_irreps == {"layer_1": "1x0e+1x1o"} and dataset.hvp_probes == 3
    assert "features_layer_2" not in dataset[0]
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch.features_layer_1.shape == (12, 4) and batch.hvp_hv.shape == (12, 3, 3)
    for k, labels in enumerate(written):
        atoms = batch.batch == k
        features = batch.features_layer_1[atoms].numpy()
        np.testing.assert_array_equal(features, labels["features"]["layer_1"])
        np.testing.assert_array_equal(batch.hvp_v[atoms].numpy(), labels["hvp_v"])
        np.testing.assert_array_equal(batch.hvp_hv[atoms].numpy(), labels["hvp_hv"])
    assert torch.isnan(batch.hvp_hv[batch.batch == 2]).all()  # structure 4 has none


def test_missing_features_or_products_are_one_line_errors(store_path):
    with pytest.raises(DataError) as error:
        GraphDataset(store_path, "reference", cutoff=3.0, indices=[0], features=("layer_1",))
    assert str(error.value) == (
        f"{store_path}: source 'reference' has no node features of layer 'layer_1' (layers: none)"
    )
    with pytest.raises(DataError, match="source 'reference' has no Hessian-vector products"):
        GraphDataset(store_path, "reference", cutoff=3.0, indices=[0], hessian=True)


def test_a_layer_name_torch_geometric_would_offset_is_refused():
    from mlip_distill.data.graph import build_graph

    features = {"features": {"batch_norm": np.zeros((1, 2))}}
    with pytest.raises(ValueError, match="feature layer 'batch_norm'"):
        build_graph([29], [[0, 0, 0]], np.eye(3) * 5.0, [True] * 3, 3.0, labels=features)


def test_a_stored_layer_torch_geometric_would_offset_is_refused_when_opening(store_path):
    with LabelStore(store_path, "a") as store:
        store.set_labels(
            "reference", [0], [{"features": {"batch_norm": np.zeros((4, 1))}}],
            feature_irreps={"batch_norm": "1x0e"},
        )
    with pytest.raises(DataError, match="feature layer 'batch_norm': torch-geometric would offset"):
        GraphDataset(store_path, "reference", cutoff=3.0, indices=[0], features=("batch_norm",))
