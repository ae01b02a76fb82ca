"""Sampling plans and the `sample` command: generators composed, tagged, and checked."""

from __future__ import annotations

from collections import Counter

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mlip_distill.cli import main
from mlip_distill.sampling import SamplingError, SamplingPlan, sample_plan
from mlip_distill.teachers import load_teacher

COPPER = "bulk:Cu:fcc:a=3.61:cubic"
SMALL_TEACHER_PLAN = {
    "rattle_strain": 3,
    "vacancies": 2,
    "relax": 4,
    "relax_steps": 2,
    "md_temperatures": [300, 1000],
    "md_frames": 2,
    "md_interval": 3,
    "md_equilibration": 5,
}


@pytest.fixture(scope="module")
def emt():
    return load_teacher("emt")


def config_types(structures) -> Counter:
    return Counter(s.info["config_type"] for s in structures)


def test_a_combined_plan_tags_every_structure_with_its_generator_and_seed(emt):
    seeds = [bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Ni", "fcc", a=3.52, cubic=True)]
    structures = sample_plan(seeds, {**SMALL_TEACHER_PLAN, "supercell": "2x1x1"}, teacher=emt, seed=1)
    assert config_types(structures) == {
        "rattle-strain": 3, "vacancy": 2, "relax": 4, "md-300K": 2, "md-1000K": 2
    }
    for structure in structures:
        seed_index = structure.info["source_index"]
        assert structure.info["system_id"] == seed_index
        n_vacancies = structure.info.get("n_vacancies", 0)
        assert len(structure) == 8 - n_vacancies  # every generator starts from the supercell
        assert set(structure.get_chemical_symbols()) == {["Cu", "Ni"][seed_index]}
    assert [s.info["source_index"] for s in structures if s.info["config_type"] == "md-300K"] == [0, 1]


def test_plans_are_reproducible_and_generators_independent(emt):
    seeds = [bulk("Cu", "fcc", a=3.61, cubic=True)]
    first = sample_plan(seeds, {"rattle_strain": 2, "vacancies": 2}, seed=3)
    again = sample_plan(seeds, {"rattle_strain": 2, "vacancies": 2}, seed=3)
    with_md = sample_plan(seeds, {"rattle_strain": 2, "vacancies": 2, "md_temperatures": [300],
                                  "md_frames": 1, "md_equilibration": 0}, teacher=emt, seed=3)
    for a, b, c in zip(first, again, with_md[:4], strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.positions, c.positions)


def test_rattle_strain_is_the_default_only_when_nothing_else_is_asked_for():
    seeds = [bulk("Cu", "fcc", a=3.61, cubic=True)]
    assert config_types(sample_plan(seeds, {})) == {"rattle-strain": 100}
    assert config_types(sample_plan(seeds, {"vacancies": 2})) == {"vacancy": 2}
    assert config_types(sample_plan(seeds, SamplingPlan(rattle_strain=0, vacancies=1))) == {"vacancy": 1}


@pytest.mark.parametrize(
    ("plan", "complaint"),
    [
        ({"vacancy": 3}, "unknown sampling option vacancy"),
        ({"relax": 2}, "--teacher"),
        ({"md_temperatures": [300]}, "--teacher"),
        ({"rattle_strain": -1}, "--rattle-strain"),
        ({"vacancies": 1.5}, "--vacancies"),
        ({"supercell": "2x2"}, "--supercell"),
        ({"relax_optimizer": "LBFGS"}, "--relax-optimizer"),
        ({"md_interval": 0}, "--md-interval"),
        ({"rattle": (0.2, 0.1)}, "--rattle"),
        ({"strain": -0.1}, "--strain"),
        ({"min_distance": -1}, "--min-distance"),
        ({"vacancies": 1, "max_vacancies": 4}, "--max-vacancies"),
    ],
)
def test_bad_plans_name_the_option(plan, complaint):
    with pytest.raises(SamplingError, match=complaint):
        sample_plan([bulk("Cu", "fcc", a=3.61, cubic=True)], plan)


# --- the command line -------------------------------------------------------------------------


def run_sample(capsys, *argv):
    status = main(["sample", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_sample_command_runs_a_combined_plan_with_the_teacher(capsys, tmp_path):
    out = tmp_path / "sampled.xyz"
    status, stdout, _ = run_sample(
        capsys, COPPER, "--out", out, "--teacher", "emt", "--supercell", "2x2x2",
        "--rattle-strain", 3, "--vacancies", 2, "--max-vacancies", 2,
        "--relax", 4, "--relax-steps", 2, "--md-temperatures", 300, 1000,
        "--md-frames", 2, "--md-interval", 3, "--md-equilibration", 5,
    )
    assert status == 0
    structures = ase.io.read(out, ":")
    assert config_types(structures) == {
        "rattle-strain": 3, "vacancy": 2, "relax": 4, "md-300K": 2, "md-1000K": 2
    }
    assert f"wrote 13 structures to {out}" in stdout and "2 md-1000K" in stdout
    for structure in structures:
        assert structure.info["system_id"] == structure.info["source_index"] == 0
        assert 30 <= len(structure) <= 32
    assert {s.info["temperature"] for s in structures if "temperature" in s.info} == {300.0, 1000.0}


def test_sample_command_keeps_n_as_the_rattle_strain_count(capsys, tmp_path):
    out = tmp_path / "sampled.xyz"
    assert run_sample(capsys, COPPER, "--out", out, "-n", 5)[0] == 0
    assert config_types(ase.io.read(out, ":")) == {"rattle-strain": 5}


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--supercell", "2x2"], "--supercell"),
        (["--relax", "3"], "--teacher"),
        (["--md-interval", "0"], "--md-interval"),
        (["--vacancies", "1", "--max-vacancies", "1.5"], "--max-vacancies"),
        (["--relax-optimizer", "LBFGS"], "--relax-optimizer"),
        (["--teacher", "nosuchteacher", "--relax", "1"], "nosuchteacher"),
    ],
)
def test_sample_command_bad_options_are_one_line(capsys, tmp_path, options, complaint):
    out = tmp_path / "sampled.xyz"
    status, _, stderr = run_sample(capsys, COPPER, "--out", out, *options)
    assert status == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("mlip-distill sample: error:") and complaint in line
    assert not out.exists()
