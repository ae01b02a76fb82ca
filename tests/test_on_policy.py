"""On-policy sampling: student MD, committee disagreement, selection and blow-up handling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.on_policy import committee_force_std, on_policy_frames
from mlip_distill.sampling.seeds import seed_structures

SEEDS = "bulk:Cu:fcc:a=3.61:cubic:2x2x2"
MD = {"temperature": 600.0, "steps": 20, "interval": 2}


class ScaledEMT(EMT):
    """EMT with every force multiplied by ``factor``: a committee member that disagrees with
    EMT by (factor - 1) / 2 of the force, per component."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.results["forces"] = self.results["forces"] * self.factor


class Collapse(Calculator):
    """Harmonic pull of every atom to the centre of mass, 1000 eV/Å²: forces of thousands of
    eV/Å that bring all atoms together within a few femtoseconds."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        offsets = self.atoms.positions - self.atoms.get_center_of_mass()
        self.results = {"energy": 500.0 * float((offsets**2).sum()), "forces": -1000.0 * offsets}


def test_committee_force_std_is_largest_per_atom_spread():
    forces = np.zeros((2, 3, 3))
    forces[1, 1] = [3.0, 4.0, 0.0]  # atom 1: members differ by a vector of length 5
    assert committee_force_std(forces) == pytest.approx(2.5)


def test_disagreement_keeps_the_frames_the_committee_disagrees_on_most():
    committee = [EMT(), ScaledEMT(1.2)]
    seeds = seed_structures(SEEDS)
    every = on_policy_frames(committee, seeds, n_frames=100, seed=3, **MD).frames
    chosen = on_policy_frames(committee, seeds, n_frames=3, seed=3, **MD).frames
    assert len(every) == MD["steps"] // MD["interval"]
    spreads = {frame.info["md_step"]: frame.info["committee_force_std"] for frame in every}
    largest = sorted(spreads, key=spreads.get)[-3:]
    assert sorted(frame.info["md_step"] for frame in chosen) == sorted(largest)
    for frame in chosen:
        assert frame.info["config_type"] == "on-policy"
        assert frame.calc is None
        frame.calc = EMT()
        # forces F and 1.2 F: the spread of each atom is 0.1 |F|, eV/Å
        largest_force = np.linalg.norm(frame.get_forces(), axis=1).max()
        assert frame.info["committee_force_std"] == pytest.approx(0.1 * largest_force, rel=1e-6)


def test_random_selection_is_reproducible_from_the_seed():
    def frames(seed: int) -> list[Atoms]:
        return on_policy_frames([EMT()], seed_structures(SEEDS), 4, selection="random", seed=seed, **MD).frames

    first, again, other = frames(7), frames(7), frames(8)
    assert len(first) == 4
    assert [frame.info["md_step"] for frame in first] == [frame.info["md_step"] for frame in again]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.positions, b.positions)
    assert not all(np.array_equal(a.positions, b.positions) for a, b in zip(first, other))


def test_a_blowing_up_trajectory_is_stopped_and_reported(caplog):
    with caplog.at_level(logging.WARNING):
        sample = on_policy_frames([Collapse()], seed_structures(SEEDS), 4, selection="random", **MD)
    assert len(sample.stopped) == 1
    stopped = sample.stopped[0]
    assert stopped.seed_index == 0 and stopped.step < MD["steps"]
    assert "closer than" in stopped.reason
    assert "stopped the on-policy trajectory" in caplog.text
    assert sample.n_candidates == len(sample.frames) < 4


def test_frames_with_close_contacts_are_rejected_and_counted():
    # nearest neighbours in fcc copper are 2.55 Å apart: every frame has a "close contact"
    sample = on_policy_frames([EMT()], seed_structures(SEEDS), 2, selection="random", min_distance=2.6, **MD)
    assert sample.frames == [] and sample.n_close_contacts == MD["steps"] // MD["interval"]


def test_disagreement_needs_a_committee():
    with pytest.raises(SamplingError, match="committee of 2"):
        on_policy_frames([EMT()], seed_structures(SEEDS), 2, **MD)
