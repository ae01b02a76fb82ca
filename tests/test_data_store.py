"""The HDF5 label store: schema, round trips, appending, lazy and multi-process reading, errors."""

from __future__ import annotations

import json
import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from torch_geometric.loader import DataLoader

import mlip_distill
from mlip_distill.data.dataset import GraphDataset
from mlip_distill.data.errors import DataError
from mlip_distill.data.io import labels_from_atoms
from mlip_distill.data.store import LabelStore, export_structures, import_structures


def copper_frames(n: int, first_seed: int = 0, stress: bool = True) -> list[Atoms]:
    """Rattled Cu supercells of 4 to 12 atoms with EMT labels (without stress if asked)."""
    frames = []
    for seed in range(first_seed, first_seed + n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + seed % 3, 1, 1))
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        if not stress:
            del atoms.calc.results["stress"]
        atoms.info["config_type"] = f"rattle-{seed}"
        frames.append(atoms)
    return frames


@pytest.fixture
def store_path(tmp_path):
    xyz = tmp_path / "train.xyz"
    write(xyz, copper_frames(4))
    path = tmp_path / "labels.h5"
    assert import_structures(xyz, path) == 4
    return path


def test_layout_follows_the_schema(store_path):
    with h5py.File(store_path, "r") as f:
        assert f.attrs["schema_version"] == 1
        assert f.attrs["created_by"] == f"mlip-distill {mlip_distill.__version__}"
        assert json.loads(f.attrs["units"])["forces"] == "eV/Å"
        n_atoms = f["structures/n_atoms"][:]
        np.testing.assert_array_equal(f["structures/offsets"][:], np.r_[0, np.cumsum(n_atoms)])
        assert f["structures/positions"].shape == (n_atoms.sum(), 3)
        assert f["structures/cell"].shape == (4, 3, 3)
        assert f["labels/reference/forces"].dtype == np.float64
        assert f["labels/reference/stress"].shape == (4, 6)
        assert f["structures/config_type"].asstr()[2] == "rattle-2"
        np.testing.assert_array_equal(f["structures/source_index"][:], [0, 1, 2, 3])
        assert all(f[f"structures/{name}"].maxshape[0] is None for name in f["structures"])


def test_extxyz_round_trip_is_exact(tmp_path):
    frames = copper_frames(3)
    frames.append(copper_frames(1, first_seed=3, stress=False)[0])
    isolated = Atoms("Cu", positions=[[0, 0, 0]], cell=[20, 20, 20], pbc=False)
    isolated.info["config_type"] = "IsolatedAtom"
    isolated.calc = EMT()
    isolated.get_potential_energy()
    write(tmp_path / "in.xyz", [isolated, *frames])
    original = read(tmp_path / "in.xyz", ":")

    assert import_structures(tmp_path / "in.xyz", tmp_path / "labels.h5") == 4
    with LabelStore(tmp_path / "labels.h5") as store:
        assert np.isnan(store.labels("reference", 3)["stress"]).all()
        assert store.isolated_atoms("reference") == {29: original[0].get_potential_energy()}
    assert export_structures(tmp_path / "labels.h5", "reference", tmp_path / "out.xyz") == 5
    back = read(tmp_path / "out.xyz", ":")

    assert back[0].info["config_type"] == "IsolatedAtom"
    assert back[0].get_potential_energy() == original[0].get_potential_energy()
    for before, after in zip(original[1:], back[1:]):
        np.testing.assert_array_equal(after.numbers, before.numbers)
        np.testing.assert_array_equal(after.positions, before.positions)
        np.testing.assert_array_equal(after.cell.array, before.cell.array)
        np.testing.assert_array_equal(after.pbc, before.pbc)
        assert after.info["config_type"] == before.info["config_type"]
        before_labels, after_labels = labels_from_atoms(before), labels_from_atoms(after)
        for key in ("energy", "forces", "stress"):
            np.testing.assert_array_equal(after_labels[key], before_labels[key])
    assert "stress" not in back[4].calc.results


def test_append_grows_the_file_and_keeps_old_content(store_path):
    with LabelStore(store_path) as store:
        old = [(store.arrays(i), store.labels("reference", i)) for i in range(len(store))]
    new_frames = copper_frames(2, first_seed=10)
    with LabelStore(store_path, "a") as store:
        indices = store.append(new_frames, system_id=[7, 7])
        np.testing.assert_array_equal(indices, [4, 5])
        store.set_labels("teacher", indices, [{"energy": np.array(-1.0)}] * 2, {"name": "emt"})
    with LabelStore(store_path) as store:
        assert len(store) == 6
        assert store.sources() == ["reference", "teacher"]
        for i, (arrays, labels) in enumerate(old):
            np.testing.assert_array_equal(store.arrays(i)["positions"], arrays["positions"])
            np.testing.assert_array_equal(store.labels("reference", i)["forces"], labels["forces"])
        np.testing.assert_array_equal(store.structure(5).positions, new_frames[1].positions)
        assert store.arrays(4)["system_id"] == store.arrays(5)["system_id"] == 7
        # the new structures have no reference labels, the old ones no teacher labels
        assert np.isnan(store.labels("reference", 5)["forces"]).all()
        np.testing.assert_array_equal(store.has_label("teacher", "energy"), [0, 0, 0, 0, 1, 1])
        np.testing.assert_array_equal(store.has_label("reference", "forces"), [1, 1, 1, 1, 0, 0])
        assert store.provenance("teacher") == {"name": "emt"}


def test_default_system_ids_are_new_and_follow_info(store_path):
    frames = copper_frames(3, first_seed=20)
    frames[0].info["system_id"] = frames[2].info["system_id"] = 0  # clashes with a stored id
    with LabelStore(store_path, "a") as store:
        indices = store.append(frames)
        ids = [store.arrays(i)["system_id"] for i in indices]
        stored = [store.arrays(i)["system_id"] for i in range(4)]
    assert ids[0] == ids[2] != ids[1]
    assert not set(ids) & set(stored)


def test_reading_by_index_slices_one_structure(store_path):
    frames = read(store_path.parent / "train.xyz", ":")
    with LabelStore(store_path) as store:
        for i in (3, 0, 2, -1):
            arrays = store.arrays(i)
            np.testing.assert_array_equal(arrays["positions"], frames[i].positions)
            np.testing.assert_array_equal(arrays["numbers"], frames[i].numbers)
            assert store.labels("reference", i)["forces"].shape == (len(frames[i]), 3)
        with pytest.raises(IndexError, match="structure 4 out of range"):
            store.arrays(4)


def test_dataloader_workers_reopen_the_file(store_path):
    dataset = GraphDataset(store_path, "reference", cutoff=3.0)
    dataset.store.arrays(0)  # the parent process has the file open before the workers fork
    in_workers = list(DataLoader(dataset, batch_size=2, num_workers=2))
    in_parent = list(DataLoader(dataset, batch_size=2))
    assert len(in_workers) == len(in_parent) == 2
    for a, b in zip(in_workers, in_parent):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.forces, b.forces)


def test_set_labels_checks_shapes(store_path):
    with LabelStore(store_path, "a") as store:
        n_atoms = len(store.arrays(1)["numbers"])
        with pytest.raises(DataError) as error:
            store.set_labels("teacher", [1], [{"forces": np.zeros((n_atoms - 1, 3))}])
    message = str(error.value)
    assert message == (
        f"{store_path}: structure 1: forces have shape ({n_atoms - 1}, 3) "
        f"but the structure has {n_atoms} atoms"
    )


def test_read_only_store_refuses_writes(store_path):
    with LabelStore(store_path) as store:
        with pytest.raises(DataError, match="read-only"):
            store.append(copper_frames(1))


def test_crash_while_writing_leaves_the_original_intact(store_path):
    before = store_path.read_bytes()
    with pytest.raises(RuntimeError, match="simulated crash"):
        with LabelStore(store_path, "a") as store:
            store.append(copper_frames(3, first_seed=30))
            store.set_labels("teacher", [0], [{"energy": np.array(1.0)}])
            raise RuntimeError("simulated crash")
    assert store_path.read_bytes() == before
    assert sorted(os.listdir(store_path.parent)) == ["labels.h5", "train.xyz"]


def test_unknown_source_names_the_known_ones(store_path):
    with LabelStore(store_path) as store:
        with pytest.raises(DataError) as error:
            store.labels("teacher", 0)
    assert str(error.value) == f"{store_path}: no labels from source 'teacher' (sources: reference)"


@pytest.mark.parametrize("damage", ["truncate", "random bytes"])
def test_damaged_file_is_a_one_line_error(store_path, damage):
    data = store_path.read_bytes()
    if damage == "truncate":
        store_path.write_bytes(data[: len(data) // 2])
    else:
        store_path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    expected = f"{store_path}: not a readable label file (corrupted or truncated?)"
    for mode in ("r", "a"):
        with pytest.raises(DataError) as error:
            LabelStore(store_path, mode)
        assert str(error.value) == expected
    assert sorted(os.listdir(store_path.parent)) == ["labels.h5", "train.xyz"]


def test_wrong_schema_version_names_both_versions(store_path):
    with h5py.File(store_path, "a") as f:
        f.attrs["schema_version"] = 7
    with pytest.raises(DataError) as error:
        LabelStore(store_path)
    assert str(error.value) == (
        f"{store_path}: label file has schema_version 7; this version of mlip-distill reads "
        "schema_version 1"
    )


def test_missing_store_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError) as error:
        LabelStore(tmp_path / "absent.h5")
    assert str(error.value) == f"{tmp_path / 'absent.h5'}: no such file"


def test_import_names_the_file_and_frame_of_bad_input(tmp_path):
    frames = copper_frames(3)
    frames[2].positions[1] = frames[2].positions[0] + [0.05, 0.0, 0.0]
    write(tmp_path / "in.xyz", frames)
    with pytest.raises(DataError) as error:
        import_structures(tmp_path / "in.xyz", tmp_path / "labels.h5", validate=True)
    assert str(error.value).startswith(f"{tmp_path / 'in.xyz'}: structure 2: atoms 0 and 1")
    assert not (tmp_path / "labels.h5").exists()


def test_isolated_atoms_merge_per_element(tmp_path):
    with LabelStore(tmp_path / "labels.h5", "a") as store:
        store.set_isolated_atoms("teacher", {29: -0.5, 79: -0.25})
        store.set_isolated_atoms("teacher", {29: -0.75})
        assert store.isolated_atoms("teacher") == {29: -0.75, 79: -0.25}
        assert store.isolated_atoms("reference") == {}
        assert len(store) == 0


def test_import_from_an_ase_database_and_molecules_without_cell(tmp_path):
    molecule = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]])
    molecule.calc = EMT()
    molecule.get_forces()
    frames = [*copper_frames(2), molecule]
    write(tmp_path / "train.db", frames)
    assert import_structures(tmp_path / "train.db", tmp_path / "labels.h5") == 3
    with LabelStore(tmp_path / "labels.h5") as store:
        back = store.structure(2)
        assert not back.pbc.any() and back.get_chemical_symbols() == ["C", "O"]
        np.testing.assert_array_equal(back.positions, molecule.positions)
        np.testing.assert_array_equal(
            store.labels("reference", 2)["forces"], molecule.calc.results["forces"]
        )


def test_only_a_read_only_store_can_be_pickled(store_path):
    with LabelStore(store_path) as store:
        copy = pickle.loads(pickle.dumps(store))
        np.testing.assert_array_equal(copy.arrays(1)["positions"], store.arrays(1)["positions"])
        copy.close()
    with LabelStore(store_path, "a") as store:
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(store)


def test_compressed_store_reads_back(tmp_path):
    frames = copper_frames(2)
    with LabelStore(tmp_path / "labels.h5", "a", compression="gzip") as store:
        store.set_labels("reference", store.append(frames), [labels_from_atoms(a) for a in frames])
    with LabelStore(tmp_path / "labels.h5") as store:
        assert store._h5["labels/reference/forces"].compression == "gzip"
        np.testing.assert_array_equal(store.labels("reference", 1)["forces"], frames[1].get_forces())


# --- node features and Hessian-vector products ------------------------------------------------


def optional_labels(n_atoms: int, seed: int, n_probes: int = 2) -> dict:
    """Features of two layers (irreps 2x0e+1x1o, dimension 5, and 3x0e) and K probes."""
    rng = np.random.default_rng(seed)
    return {
        "features": {
            "layer_1": rng.normal(size=(n_atoms, 5)),
            "layer_2": rng.normal(size=(n_atoms, 3)),
        },
        "hvp_v": rng.normal(size=(n_atoms, n_probes, 3)),
        "hvp_hv": rng.normal(size=(n_atoms, n_probes, 3)),
    }


IRREPS = {"layer_1": "2x0e+1x1o", "layer_2": "3x0e"}


def test_features_and_hessian_vector_products_round_trip(store_path):
    with LabelStore(store_path) as store:
        sizes = [len(store.arrays(i)["numbers"]) for i in range(len(store))]
    written = {i: optional_labels(sizes[i], seed=i) for i in (1, 3)}
    with LabelStore(store_path, "a") as store:
        store.set_labels("teacher", [3, 1], [written[3], written[1]], feature_irreps=IRREPS)
    with h5py.File(store_path, "r") as f:
        assert f["labels/teacher/features/layer_1"].attrs["irreps"] == "2x0e+1x1o"
        assert f["labels/teacher/features/layer_1"].shape == (sum(sizes), 5)
        assert f["labels/teacher/hvp_hv"].shape == (sum(sizes), 2, 3)
    with LabelStore(store_path) as store:
        assert store.feature_layers("teacher") == IRREPS
        assert store.hvp_probes("teacher") == 2 and store.hvp_probes("reference") == 0
        assert store.feature_layers("reference") == {}
        for i, expected in written.items():
            labels = store.labels("teacher", i)
            for layer in IRREPS:
                np.testing.assert_array_equal(
                    labels["features"][layer], expected["features"][layer]
                )
            for key in ("hvp_v", "hvp_hv"):
                np.testing.assert_array_equal(labels[key], expected[key])
        unlabelled = store.labels("teacher", 0)
        assert unlabelled["features"]["layer_2"].shape == (sizes[0], 3)
        assert np.isnan(unlabelled["features"]["layer_2"]).all()
        assert np.isnan(unlabelled["hvp_v"]).all()
        only_layer_2 = store.labels("teacher", 1, features=["layer_2"], hessian=False)
        assert list(only_layer_2["features"]) == ["layer_2"] and "hvp_v" not in only_layer_2
        assert "features" not in store.labels("reference", 1)  # sources without them: no keys
        np.testing.assert_array_equal(store.has_label("teacher", "hvp_hv"), [0, 1, 0, 1])
        np.testing.assert_array_equal(store.has_label("teacher", "features/layer_1"), [0, 1, 0, 1])
        np.testing.assert_array_equal(store.has_label("reference", "hvp_hv"), [0, 0, 0, 0])
        missing = r"no node features of layer 'layer_3' \(layers: layer_1, layer_2\)"
        with pytest.raises(DataError, match=missing):
            store.labels("teacher", 1, features=["layer_3"])


def test_appending_structures_nan_fills_features_and_products(store_path):
    with LabelStore(store_path, "a") as store:
        n_atoms = len(store.arrays(0)["numbers"])
        store.set_labels("teacher", [0], [optional_labels(n_atoms, seed=0)], feature_irreps=IRREPS)
        new = store.append(copper_frames(2, first_seed=10))
        new_sizes = [len(store.arrays(i)["numbers"]) for i in new]
    with LabelStore(store_path) as store:
        assert len(store) == 6
        for i, n in zip(new, new_sizes):
            labels = store.labels("teacher", i)
            assert labels["features"]["layer_1"].shape == (n, 5)
            assert labels["hvp_hv"].shape == (n, 2, 3)
            assert np.isnan(labels["features"]["layer_1"]).all()
            assert np.isnan(labels["hvp_hv"]).all()
        assert np.isfinite(store.labels("teacher", 0)["hvp_hv"]).all()


def test_replace_forgets_the_optional_labels_a_new_label_set_lacks(store_path):
    with LabelStore(store_path, "a") as store:
        n_atoms = len(store.arrays(0)["numbers"])
        store.set_labels("teacher", [0], [optional_labels(n_atoms, seed=0)], feature_irreps=IRREPS)
        store.set_labels("teacher", [0], [{"energy": np.array(-1.0)}])
        assert np.isfinite(store.labels("teacher", 0)["hvp_v"]).all()  # kept by default
        store.set_labels("teacher", [0], [{"energy": np.array(-2.0)}], replace=True)
        labels = store.labels("teacher", 0)
    assert float(labels["energy"]) == -2.0
    assert np.isnan(labels["hvp_v"]).all() and np.isnan(labels["features"]["layer_1"]).all()
    assert np.isnan(labels["forces"]).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda labels: labels.pop("hvp_hv"), "hvp_v without its partner"),
        (
            lambda labels: labels.update(hvp_v=np.zeros((1, 2, 3))),
            r"hvp_v has shape \(1, 2, 3\), expected \(4, K, 3\)",
        ),
        (
            lambda labels: labels["features"].update(layer_1=np.zeros((4, 6))),
            r"features of layer 'layer_1' have 6 columns, but their irreps 2x0e\+1x1o have dimension 5",
        ),
        (
            lambda labels: labels["features"].update(layer_9=np.zeros((4, 1))),
            "no irreps given for the new feature layer 'layer_9'",
        ),
        (lambda labels: labels["hvp_hv"].__setitem__((0, 0, 0), np.nan), "hvp_hv partly NaN"),
        (lambda labels: labels.update(hessian=1.0), "unknown label 'hessian'"),
    ],
    ids=["lone hvp_v", "wrong atom count", "wrong width", "no irreps", "partly NaN", "unknown key"],
)
def test_bad_optional_labels_name_the_structure(store_path, change, message):
    with LabelStore(store_path, "a") as store:
        assert len(store.arrays(0)["numbers"]) == 4
        labels = optional_labels(4, seed=0)
        change(labels)
        with pytest.raises(DataError, match=f"{store_path}: structure 0: {message}"):
            store.set_labels("teacher", [0], [labels], feature_irreps=IRREPS)


def test_a_source_keeps_its_number_of_probes_and_irreps(store_path):
    with LabelStore(store_path, "a") as store:
        store.set_labels("teacher", [0], [optional_labels(4, seed=0)], feature_irreps=IRREPS)
        three_probes = optional_labels(len(store.arrays(1)["numbers"]), seed=1, n_probes=3)
        with pytest.raises(DataError, match="structure 1: 3 Hessian-vector probes, but the source stores 2"):
            store.set_labels("teacher", [1], [three_probes])
        with pytest.raises(DataError, match=r"irreps 5x0e, but the source stores 2x0e\+1x1o"):
            store.set_labels(
                "teacher", [0], [optional_labels(4, seed=0)], feature_irreps={"layer_1": "5x0e"}
            )


def test_export_ignores_features_and_products(store_path, tmp_path):
    with LabelStore(store_path, "a") as store:
        store.set_labels("reference", [0], [optional_labels(4, seed=0)], feature_irreps=IRREPS)
    assert export_structures(store_path, "reference", tmp_path / "out.xyz") == 4
    assert read(tmp_path / "out.xyz", 0).get_forces().shape == (4, 3)
