"""`mlip-distill hpo`: searches on a tiny EMT copper set complete, resume, share a study, prune,
and refuse bad input before their first trial."""

from __future__ import annotations

import csv
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from conftest import emt_copper_cells
from mlip_distill.data.io import labels_from_atoms
from mlip_distill.data.store import LabelStore
from mlip_distill.hpo import SearchError, run_search
from mlip_distill.hpo import study as study_module
from mlip_distill.hpo.config import compose_training, prepare_search
from mlip_distill.hpo.objective import Objective
from mlip_distill.hpo.study import open_study

TINY = ["data.n_valid=4", "data.batch_size=4", "model.channels=4", "model.num_layers=1", "model.radial_hidden=8",
        "model.num_basis=4", "scheduler.warmup_steps=0", "++ema.enabled=false", "trainer.log_every_n_steps=1"]
SEARCHES = {
    "tpe4": """
n_trials: 4
trial_epochs: 1
space:
  lr: {key: optimizer.lr, low: 1.0e-3, high: 2.0e-2, log: true}
  forces_weight: {key: loss.forces.weight, low: 1.0, high: 100.0, log: true}
  batch_size: {key: data.batch_size, choices: [2, 4]}
""",
    "grid4": """
sampler: {name: grid}
n_trials: null
trial_epochs: 1
objective: val_forces_mae_mev_per_A + 2*reference_energy_mae_mev_per_atom
space:
  energy_weight: {key: loss.energy.weight, choices: [1.0, 5.0]}
  forces_weight: {key: loss.forces.weight, choices: [10.0, 30.0]}
""",
    "prune": """
n_trials: 2
trial_epochs: 3
include_base: false
pruner: {startup_trials: 1, warmup_epochs: 0}
space:
  labels: {key: data.source, choices: [teacher, teacher_x3]}
""",
}


@pytest.fixture(autouse=True)
def no_curve_plots(monkeypatch):
    """Skip each run's curves.png: drawing it takes longer than the tiny training itself."""
    def empty_plot(rows, path, stage_names=()):
        Path(path).touch()
        return Path(path)

    monkeypatch.setattr("mlip_distill.training.curves.plot_curves", empty_plot)


@pytest.fixture(scope="module")
def label_file(tmp_path_factory) -> Path:
    """12 EMT copper cells of 4 atoms, labelled as the teacher, as the reference (the same
    labels) and as ``teacher_x3`` (three times the teacher's forces: much harder to match)."""
    path = tmp_path_factory.mktemp("hpo") / "cu.h5"
    cells = emt_copper_cells(12, repeat=(1, 1, 1), seed=3)
    labels = [labels_from_atoms(atoms) for atoms in cells]
    with LabelStore(path, "a") as store:
        indices = store.append(cells)
        store.set_labels("teacher", indices, labels, provenance={"name": "emt"})
        store.set_labels("reference", indices, labels, provenance={"name": "emt"})
        tripled = [{**label, "forces": 3 * label["forces"]} for label in labels]
        store.set_labels("teacher_x3", indices, tripled, provenance={"name": "emt x3"})
    return path


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    """The test searches as an `hpo` config group, each extending the packaged `base`."""
    directory = tmp_path_factory.mktemp("configs")
    (directory / "hpo").mkdir()
    for name, body in SEARCHES.items():
        (directory / "hpo" / f"{name}.yaml").write_text("defaults:\n  - base\n  - _self_\n" + body)
    return directory


def search(name, label_file, config_dir, out, *overrides):
    return prepare_search(name, [f"data.path={label_file}", *TINY, *overrides], out=out, config_dir=config_dir)


def read_trials(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as handle:
        return list(csv.DictReader(handle))


def finished(rows, state="complete"):
    return [row for row in rows if row["state"] == state]


def test_tpe_search_writes_every_result_file(label_file, config_dir, tmp_path):
    result = run_search(search("tpe4", label_file, config_dir, tmp_path / "s"))
    rows = read_trials(tmp_path / "s")
    assert result.n_complete == 4 and len(finished(rows)) == 4
    assert len({(row["lr"], row["forces_weight"], row["batch_size"]) for row in rows}) == 4
    # trial 0 is the training config as given, the baseline of the summary
    assert rows[0]["baseline"] == "True" and float(rows[0]["lr"]) == 0.005 and float(rows[0]["forces_weight"]) == 10
    for row in rows:
        assert float(row["objective"]) == pytest.approx(float(row["val_forces_mae_mev_per_A"]), rel=1e-5)
        config = OmegaConf.load(Path(row["run_dir"]) / "config.yaml")
        assert config.optimizer.lr == pytest.approx(float(row["lr"]), rel=1e-5)
        assert config.data.batch_size == int(row["batch_size"]) and config.trainer.max_epochs == 1
        assert (Path(row["run_dir"]) / "potential" / "potential.json").is_file()
        # the overrides in trials.csv compose the trial's config again (rerun with mlip-distill train)
        rerun = OmegaConf.to_container(compose_training(row["overrides"].split()).config, resolve=True)
        assert rerun == {**OmegaConf.to_container(config), "run_dir": None}
    best = min(rows, key=lambda row: float(row["objective"]))
    assert result.best_number == int(best["number"])
    # best.yaml is a config to train with: it composes to the best trial's config
    composed = compose_training(["experiment=best"], tmp_path / "s").config
    expected = OmegaConf.load(Path(best["run_dir"]) / "config.yaml")
    assert OmegaConf.to_container(composed.model) == OmegaConf.to_container(expected.model)
    assert OmegaConf.to_container(composed.loss) == OmegaConf.to_container(expected.loss)
    assert composed.optimizer.lr == expected.optimizer.lr and composed.data.batch_size == expected.data.batch_size
    for name in ("history.png", "importance.png"):
        data = (tmp_path / "s" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = (tmp_path / "s" / "SUMMARY.md").read_text()
    assert f"Best: trial {best['number']}, objective **{float(best['objective']):.4g}**" in summary
    assert "4 complete, 0 pruned, 0 failed" in summary and "tpe" in summary


def test_interrupted_search_resumes_without_repeating_finished_trials(label_file, config_dir, tmp_path, monkeypatch):
    out = tmp_path / "r"
    calls = []
    real_train = study_module.train

    def interrupted_on_third(config, callbacks=None):
        calls.append(config.run_dir)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(config, callbacks=callbacks)

    monkeypatch.setattr(study_module, "train", interrupted_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_search(search("grid4", label_file, config_dir, out))
    first_two = {row["number"]: (row["objective"], Path(row["run_dir"], "metrics.csv").read_text())
                 for row in finished(read_trials(out))}
    assert len(first_two) == 2

    calls.clear()
    result = run_search(search("grid4", label_file, config_dir, out))
    rows = read_trials(out)
    assert len(calls) == 2  # the interrupted point and the one never started
    assert result.n_complete == 4
    complete = finished(rows)
    assert {(row["energy_weight"], row["forces_weight"]) for row in complete} == {
        (row["energy_weight"], row["forces_weight"]) for row in rows}
    assert len({(row["energy_weight"], row["forces_weight"]) for row in complete}) == 4
    for number, (objective, metrics) in first_two.items():
        row = next(row for row in rows if row["number"] == number)
        assert row["objective"] == objective and Path(row["run_dir"], "metrics.csv").read_text() == metrics
    interrupted = next(row for row in rows if row["state"] == "fail")
    retry = next(row for row in rows if row["retry_of"] == interrupted["number"])
    assert retry["state"] == "complete"
    assert (retry["energy_weight"], retry["forces_weight"]) == (interrupted["energy_weight"], interrupted["forces_weight"])


def test_the_trial_of_a_killed_worker_is_run_again(label_file, config_dir, tmp_path):
    prepared = search("tpe4", label_file, config_dir, tmp_path / "k", "hpo.n_trials=2")
    prepared.out.mkdir(parents=True)
    study, _ = open_study(prepared)
    # what a worker killed mid-trial leaves behind: a running trial of a process that is gone
    gone = subprocess.Popen(["true"])
    gone.wait()
    abandoned = study.ask()
    params = {parameter.name: parameter.suggest(abandoned) for parameter in prepared.space}
    abandoned.set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")
    result = run_search(prepared)
    rows = read_trials(tmp_path / "k")
    assert rows[0]["state"] == "fail" and result.n_complete == 2
    retry = next(row for row in rows if row["retry_of"] == "0")
    assert retry["state"] == "complete"
    assert float(retry["lr"]) == pytest.approx(params["lr"]) and int(retry["batch_size"]) == params["batch_size"]


def test_two_worker_processes_share_a_grid_without_duplicates(label_file, config_dir, tmp_path):
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "mlip_distill.cli", "hpo", "--search", "grid4", "--config-dir", str(config_dir),
               "--out", str(out), f"data.path={label_file}", *TINY]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on a small machine
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=one_thread)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    trials = optuna.load_study(study_name="grid4", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert len(trials) == 4 and all(trial.state.name == "COMPLETE" for trial in trials)
    points = [(trial.params["energy_weight"], trial.params["forces_weight"]) for trial in trials]
    assert sorted(points) == sorted(itertools.product([1.0, 5.0], [10.0, 30.0]))
    assert len({trial.user_attrs["worker"] for trial in trials}) == 2  # both processes took trials
    rows = read_trials(out)
    assert len(finished(rows)) == 4 and len({row["run_dir"] for row in rows}) == 4
    for row in rows:
        # reference labels equal the teacher's here, so both evaluations must agree
        assert float(row["reference_energy_mae_mev_per_atom"]) == pytest.approx(
            float(row["val_energy_mae_mev_per_atom"]), rel=1e-4)
        expected = float(row["val_forces_mae_mev_per_A"]) + 2 * float(row["reference_energy_mae_mev_per_atom"])
        assert float(row["objective"]) == pytest.approx(expected, rel=1e-5)
    for name in ("best.yaml", "history.png", "importance.png", "SUMMARY.md"):
        assert (out / name).stat().st_size > 500, name
    assert "grid" in (out / "SUMMARY.md").read_text()


def test_a_clearly_worse_trial_is_pruned_and_recorded_as_pruned(label_file, config_dir, tmp_path):
    prepared = search("prune", label_file, config_dir, tmp_path / "p", "hpo.n_trials=1")
    prepared.out.mkdir(parents=True)
    study, _ = open_study(prepared)
    study.enqueue_trial({"labels": "teacher"})
    run_search(prepared)
    # then the same student against three times the forces: its first epoch's error is about 3x the median
    study.enqueue_trial({"labels": "teacher_x3"})
    result = run_search(search("prune", label_file, config_dir, tmp_path / "p"))
    rows = read_trials(tmp_path / "p")
    assert (result.n_complete, result.n_pruned) == (1, 1)
    pruned = finished(rows, "pruned")[0]
    assert pruned["labels"] == "teacher_x3" and int(pruned["epochs"]) < 3
    assert int(finished(rows)[0]["epochs"]) == 3
    assert "1 complete, 1 pruned" in (tmp_path / "p" / "SUMMARY.md").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["~hpo.space"], "hpo.space is empty"),
        (["hpo.space.lr.key=optimizer.lrr"], "optimizer.lrr is not a setting"),
        (["hpo.space.lr.low=0.5"], "low (0.5) must be below high"),
        (["hpo.sampler.name=grid"], "hpo.space.lr: the grid sampler needs a list of choices"),
        (["hpo.space.batch_size.choices=[]"], "choices must be a non-empty list"),
        (["hpo.space.batch_size.key=optimizer.lr"], "key optimizer.lr is already searched by hpo.space.lr"),
        (["+hpo.space.student={key: model, choices: [nequip, transformer]}"], "model has no option(s) transformer"),
        (["hpo.space.batch_size.choices=[2, big]"], "'big' is not a value for data.batch_size, which is 4"),
        (["hpo.objective=val_forces_mse_mev_per_A"], "val_forces_mse_mev_per_A: not an error the runs report"),
        (["hpo.objective=val_energy_mae_mev_per_atom+dft_forces_mae_mev_per_A"], "has no label source 'dft'"),
        (["hpo.objective=0*val_forces_mae_mev_per_A"], "the weight must be positive"),
    ],
)
def test_bad_searches_fail_in_one_line_before_any_trial(label_file, config_dir, tmp_path, overrides, message):
    with pytest.raises(SearchError) as error:
        search("tpe4", label_file, config_dir, tmp_path / "bad", *overrides)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "bad").exists()


def test_a_study_of_another_search_is_refused_before_any_trial(label_file, config_dir, tmp_path):
    out = tmp_path / "s"
    first = search("tpe4", label_file, config_dir, out)
    out.mkdir()
    open_study(first)
    changed = search("tpe4", label_file, config_dir, out, "hpo.space.lr.high=0.05")
    with pytest.raises(SearchError, match="belongs to another search .*space"):
        run_search(changed)
    other_name = search("grid4", label_file, config_dir, out)
    with pytest.raises(SearchError, match="holds the study 'tpe4', not 'grid4'"):
        run_search(other_name)
    assert not (out / "trials").exists()


def test_an_objective_metric_the_runs_do_not_log_is_named():
    objective = Objective.parse("val_stress_mae_mev_per_A3 + 2*val_forces_mae_mev_per_A")
    assert objective.epoch_value({"val_stress_mae_mev_per_A3": 3.0, "val_forces_mae_mev_per_A": 5.0}) == 13.0
    with pytest.raises(SearchError, match="val_stress_mae_mev_per_A3: the runs do not log this metric"):
        objective.epoch_value({"val_forces_mae_mev_per_A": 5.0, "val_loss": 1.0})


def test_cli_reports_a_bad_search_in_one_line(label_file, tmp_path, capsys):
    from mlip_distill.cli import main

    code = main(["hpo", "--out", str(tmp_path / "x"), f"data.path={label_file}", "hpo.space.lr.low=-1"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "mlip-distill hpo: error: hpo.space.lr: a log range needs low > 0, not -1"
