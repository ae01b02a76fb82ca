"""`mlip-distill distill`: the whole path, small enough for the test suite."""

from __future__ import annotations

import json

from mlip_distill.pipeline import DistillSettings, distill


def test_distill_runs_every_stage_and_reports(tmp_path):
    settings = DistillSettings(
        seeds="bulk:Cu:fcc:a=3.61:cubic",
        teacher="emt",
        experiment="cu_emt",
        sampling={"rattle_strain": 12, "rattle": (0.05, 0.15), "strain": 0.01},
        n_valid=3,
        md_structure="bulk:Cu:fcc:a=3.61:cubic",
        md_steps=5,
        teacher_md_steps=5,
        train_overrides=["trainer.max_epochs=2", "trainer.max_time=null", "model.channels=4", "model.num_layers=1"],
    )
    summary = distill(settings, root=tmp_path)
    run_dirs = list((tmp_path / "cu_emt").iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    for name in ("structures.xyz", "labels.h5", "summary.json", "train/potential/potential.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["n_structures"] == 12 and summary["n_valid"] == 3
    errors = summary["errors_vs_teacher"]
    assert errors["forces_rmse_mev_per_A"] >= errors["forces_mae_mev_per_A"] > 0
    assert summary["md"]["student_steps"] == 5 and summary["md"]["student_steps_per_s"] > 0
    metadata = json.loads((run_dir / "train/potential/potential.json").read_text())
    assert metadata["teacher"]["spec"] == "emt"


def test_distill_with_an_on_policy_round_adds_labelled_frames_and_retrains(tmp_path):
    from mlip_distill.data.store import LabelStore

    settings = DistillSettings(
        seeds="bulk:Cu:fcc:a=3.61:cubic",
        teacher="emt",
        experiment="cu_emt",
        sampling={"rattle_strain": 12, "rattle": (0.05, 0.15), "strain": 0.01},
        n_valid=3,
        md_structure="bulk:Cu:fcc:a=3.61:cubic",
        md_steps=5,
        teacher_md_steps=5,
        train_overrides=["trainer.max_epochs=2", "trainer.max_time=null", "model.channels=4", "model.num_layers=1"],
        rounds=1,
        committee_size=2,
        on_policy_frames=4,
        on_policy_steps=10,
        on_policy_interval=2,
    )
    summary = distill(settings, root=tmp_path)
    run_dir = next((tmp_path / "cu_emt").iterdir())
    with LabelStore(run_dir / "labels.h5") as store:
        assert len(store) == 12 + 4
        config_types = [store.arrays(index)["config_type"] for index in range(len(store))]
        assert store.has_label("teacher", "forces")[12:].all()
    assert config_types[12:] == ["on-policy"] * 4 and "on-policy" not in config_types[:12]
    for name in ("train", "train-member1", "round1/train", "round1/train-member1"):
        assert (run_dir / name / "potential/potential.json").is_file(), name
    (round_1,) = summary["rounds"]
    assert round_1["frames_added"] == 4 and len(round_1["committee_force_std_eV_per_A"]) == 4
    assert min(round_1["committee_force_std_eV_per_A"]) > 0
    assert round_1["previous_errors_on_new_frames"]["n_structures"] == 4
    assert summary["potential"] == round_1["potential"] == str(run_dir / "round1/train/potential")
    seeds = [json.loads((run_dir / name / "potential/potential.json").read_text())["training"]["config"]["seed"]
             for name in ("round1/train", "round1/train-member1")]
    assert seeds == [0, 1]


def test_distill_command_takes_sampling_plan_changes(tmp_path, capsys):
    from mlip_distill.cli import main

    tiny = ["trainer.max_epochs=1", "trainer.max_time=null", "model.channels=4", "model.num_layers=1"]
    code = main([
        "distill", "--seeds", "bulk:Cu:fcc:a=3.61:cubic", "--teacher", "emt", "--experiment", "cu_emt",
        "--sample", "supercell=null", "--sample", "rattle_strain=6", "--sample", "vacancies=2",
        "--sample", "md_temperatures=[]", "--sample", "rattle=[0.05,0.1]", "--n-valid", "2",
        "--md-structure", "bulk:Cu:fcc:a=3.61:cubic", "--md-steps", "3", "--teacher-md-steps", "3", "--root", str(tmp_path), *tiny,
    ])
    assert code == 0
    run_dir = next((tmp_path / "cu_emt").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n_structures"] == 8  # 6 rattled-strained + 2 with a vacancy, no MD frames
    printed = capsys.readouterr().out
    ratio = summary["md"]["student_steps_per_s"] / summary["md"]["teacher_steps_per_s"]
    assert ("x faster" if ratio >= 1 else "x slower") in printed and summary["potential"] in printed

    assert main(["distill", "--sample", "hot_md=5", "--root", str(tmp_path)]) == 2
    assert "unknown sampling option hot_md" in capsys.readouterr().err
