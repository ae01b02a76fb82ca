"""`mlip-distill distill`: the whole path, small enough for the test suite."""

from __future__ import annotations

import json

from mlip_distill.pipeline import DistillSettings, distill


def test_distill_runs_every_stage_and_reports(tmp_path):
    settings = DistillSettings(
        seeds="bulk:Cu:fcc:a=3.61:cubic",
        n_structures=12,
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
