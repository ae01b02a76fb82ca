"""`mlip-distill train --sanity`: every check passes on a healthy tiny EMT setup, and each broken
setup fails the check that is meant to catch it."""

from __future__ import annotations

import pytest

from mlip_distill.cli import main
from mlip_distill.losses.labels import ForcesLoss
from mlip_distill.training import sanity
from mlip_distill.training.ema import WeightAverage
from mlip_distill.training.module import StudentModule
from mlip_distill.training.run import compose_config

TINY = [
    "model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "data.n_valid=8",
    "data.valid_batch_size=3", "scheduler.warmup_steps=0",
]
NAMES = {
    "loss": "loss falls over the first",
    "gradients": "every loss term has gradient",
    "validation": "validation = direct evaluation",
    "resume": "checkpoint resumes exactly",
    "batching": "batching does not change the loss",
    "memory": "peak memory",
}


def failed(report) -> set[str]:
    return {key for key, name in NAMES.items() for check in report.checks if check.name.startswith(name) and not check.passed}


def detail(report, key: str) -> str:
    return next(check.detail for check in report.checks if check.name.startswith(NAMES[key]))


def test_a_healthy_setup_passes_every_check(copper_label_file, capsys):
    status = main(["train", "--sanity", f"data.path={copper_label_file}", *TINY])
    table = capsys.readouterr().out
    assert status == 0, table
    assert "all checks passed" in table
    assert table.count("PASS") == len(NAMES) and "FAIL" not in table


def test_a_learning_rate_of_zero_fails_with_status_one(copper_label_file, capsys):
    status = main(["train", "--sanity", f"data.path={copper_label_file}", *TINY, "optimizer.lr=0"])
    table = capsys.readouterr().out
    assert status == 1
    assert "1 of 6 checks failed" in table and "at learning rate 0" in table


def run(copper_label_file, *overrides: str):
    """The checks over 20 steps (enough for every check but the loss's fall)."""
    return sanity.run_sanity_checks(compose_config([f"data.path={copper_label_file}", *TINY, *overrides]), steps=20)


def test_a_detached_force_prediction_sends_no_gradient(copper_label_file, monkeypatch):
    monkeypatch.setattr(ForcesLoss, "values", lambda self, prediction, batch: (prediction["forces"].detach(), batch.forces))
    report = run(copper_label_file)
    assert "gradients" in failed(report)
    assert "forces: gradient norm 0" in detail(report, "gradients")


def test_a_term_of_zero_weight_is_reported(copper_label_file):
    report = run(copper_label_file, "loss.energy.weight=0")
    assert "gradients" in failed(report) and "energy: weight 0" in detail(report, "gradients")


def test_per_batch_normalisation_makes_the_loss_depend_on_batching(copper_label_file, monkeypatch):
    def by_batch_rms(self, prediction, batch):
        rms = batch.forces.square().mean().sqrt()
        return prediction["forces"] / rms, batch.forces / rms

    monkeypatch.setattr(ForcesLoss, "values", by_batch_rms)
    report = run(copper_label_file)
    assert failed(report) - {"loss"} == {"batching"}
    assert "normalise per atom or per structure" in detail(report, "batching")


def test_a_weight_average_left_out_of_checkpoints_breaks_resume(copper_label_file, monkeypatch):
    monkeypatch.setattr(WeightAverage, "state_dict", lambda self: {})
    monkeypatch.setattr(WeightAverage, "load_state_dict", lambda self, state: None)
    report = run(copper_label_file)
    assert failed(report) - {"loss"} == {"resume"}
    assert "weight average" in detail(report, "resume")


def test_validation_metrics_reset_every_batch_disagree_with_evaluation(copper_label_file, monkeypatch):
    validation_step = StudentModule.validation_step

    def resetting(self, batch, batch_idx):
        self.val_metrics.reset()
        return validation_step(self, batch, batch_idx)

    monkeypatch.setattr(StudentModule, "validation_step", resetting)
    report = run(copper_label_file)
    assert failed(report) - {"loss"} == {"validation"}


def test_too_little_memory_suggests_a_smaller_batch_with_accumulation(copper_label_file, monkeypatch):
    monkeypatch.setattr(sanity, "_available_memory", lambda device: 2**10)
    report = run(copper_label_file, "data.batch_size=8")
    assert failed(report) - {"loss"} == {"memory"}
    assert "data.batch_size=1 trainer.accumulate_grad_batches=8 " in detail(report, "memory")


def test_missing_settings_are_a_user_error(capsys):
    assert main(["train", "--sanity"]) == 2
    assert "data.path" in capsys.readouterr().err


@pytest.mark.parametrize("overrides", [["data.max_atoms_per_batch=24"]])
def test_batching_by_atom_count_is_checked_with_its_largest_batch(copper_label_file, overrides):
    report = run(copper_label_file, *overrides)
    assert failed(report) - {"loss"} == set()
    assert "(3 structures, 24 atoms)" in detail(report, "memory")
