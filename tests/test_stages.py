"""Multi-stage training: distill on teacher labels, fine-tune on reference labels, QAT; the
learning-rate re-warm and loss-weight ramps in the curves; resuming a run killed in stage 2."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import emt_copper_cells, write_label_file
from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.io import labels_from_atoms
from mlip_distill.data.store import LabelStore
from mlip_distill.export import export_run
from mlip_distill.package import load_potential
from mlip_distill.training.curves import read_curves_csv
from mlip_distill.training.errors import ConfigError
from mlip_distill.training.run import compose_config, train

# DFT and a teacher differ mostly by a constant per element: the reference labels here are EMT
# shifted by this much per atom, which the fine-tune stage's E0 refit must absorb.
OFFSET_PER_ATOM = 0.25  # eV
WARMUP, RAMP, STEPS_PER_EPOCH = 6, 8, 4  # 32 training cells in batches of 8

STAGES = f"""\
# @package _global_
defaults:
  - override /scheduler: cosine
stages:
  - name: distill
    data: {{source: teacher}}
    loss: {{energy: {{weight: 5.0, kind: mse}}, forces: {{weight: 100.0, kind: mse}}}}
    optimizer: {{lr: 0.005}}
    scheduler: {{warmup_steps: 4, eta_min: 1.0e-4}}
    trainer: {{max_epochs: 2}}
  - name: fine-tune
    optional: true
    ramp_steps: {RAMP}
    data: {{source: reference}}
    loss: {{energy: {{weight: 20.0, kind: mse}}, forces: {{weight: 100.0, kind: mse}}}}
    optimizer: {{lr: 0.002}}
    scheduler: {{warmup_steps: {WARMUP}, eta_min: 1.0e-4}}
    trainer: {{max_epochs: 3}}
  - name: qat
    qat: true
    optimizer: {{lr: 0.0005}}
    scheduler: {{warmup_steps: 2}}
    trainer: {{max_epochs: 1}}
"""
TINY = ["experiment=tiny_stages", "model.channels=8", "model.num_layers=1", "model.radial_hidden=16",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.n_valid=8",
        "data.batch_size=8", "logger=csv", "ema.decay=0.9"]


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    (folder / "experiment").mkdir()
    (folder / "experiment" / "tiny_stages.yaml").write_text(STAGES)
    return folder


@pytest.fixture(scope="module")
def cells():
    return emt_copper_cells(40, seed=5)


@pytest.fixture(scope="module")
def two_source_file(tmp_path_factory, cells):
    """Teacher labels (EMT) and reference labels (EMT + a constant per atom) of the same cells."""
    path = write_label_file(tmp_path_factory.mktemp("stages") / "labels.h5", cells)
    with LabelStore(path, "a") as store:
        labels = [labels_from_atoms(a) for a in cells]
        for label, atoms in zip(labels, cells):
            label["energy"] = label["energy"] + OFFSET_PER_ATOM * len(atoms)
        store.set_labels("reference", list(range(len(cells))), labels, provenance={"name": "emt+offset"})
    return path


def _config(config_dir, path, run_dir, *more):
    return compose_config([*TINY, f"data.path={path}", f"run_dir={run_dir}", *more], config_dir=config_dir)


def _step_rows(folder: Path, key: str) -> list[float]:
    """Per-step values of ``key`` from a stage's Lightning metrics.csv, in step order."""
    with open(next(folder.glob("**/metrics.csv"))) as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


@pytest.fixture(scope="module")
def three_stage_run(config_dir, two_source_file, tmp_path_factory):
    return train(_config(config_dir, two_source_file, tmp_path_factory.mktemp("run") / "run"))


def test_three_stages_rewarm_the_rate_and_ramp_the_weights(three_stage_run):
    run_dir = three_stage_run.run_dir
    rows = read_curves_csv(run_dir / "curves.csv")
    assert [int(r["stage"]) for r in rows] == [1] * 2 + [2] * 3 + [3]
    assert [r["epoch"] for r in rows] == list(range(6))
    assert np.all(np.diff([r["step"] for r in rows]) == STEPS_PER_EPOCH)

    first = json.loads((run_dir / "stages" / "1-distill" / "stage.json").read_text())
    second = json.loads((run_dir / "stages" / "2-fine-tune" / "stage.json").read_text())
    assert first["final_lr"] == pytest.approx(1e-4)  # the cosine ran down to eta_min
    # stage 2's rate starts at stage 1's final rate, not near zero, and rises linearly to 0.002
    lr = _step_rows(run_dir / "stages" / "2-fine-tune", "lr")
    expected = [first["final_lr"] + (0.002 - first["final_lr"]) * k / (WARMUP - 1) for k in range(WARMUP)]
    np.testing.assert_allclose(lr[:WARMUP], expected, rtol=1e-6)
    # the energy weight ramps from 5 to 20 over RAMP steps: epoch means of the ramp in curves.csv
    stage2 = [r for r in rows if r["stage"] == 2]
    for epoch, row in enumerate(stage2):
        steps = np.arange(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
        mean = np.mean(5.0 + 15.0 * np.minimum(steps / RAMP, 1.0))
        assert row["weight_energy"] == pytest.approx(mean), epoch
        assert row["weight_forces"] == pytest.approx(100.0)
    assert second["loss_weights"] == {"energy": 20.0, "forces": 100.0}
    assert all(r["weight_energy"] == pytest.approx(5.0) for r in rows if r["stage"] == 1)


def test_fine_tune_refits_e0_and_the_qat_export_runs(three_stage_run, cells):
    potential = three_stage_run.potential_dir
    metadata = json.loads((potential / "potential.json").read_text())
    assert metadata["quantization"]["weights"]  # the QAT stage exported int8 weights
    assert any(v.dtype == torch.int8 for v in load_file(potential / "weights.safetensors").values())
    assert [s["name"] for s in metadata["training"]["stages"]] == ["distill", "fine-tune", "qat"]
    # E0 follows the reference labels: per-atom energies are near the reference, not the teacher
    errors_reference, errors_teacher = [], []
    for atoms in cells[:10]:
        probe = atoms.copy()
        probe.calc = StudentCalculator(str(potential))
        energy = probe.get_potential_energy() / len(probe)
        teacher = atoms.get_potential_energy() / len(atoms)
        errors_reference.append(energy - (teacher + OFFSET_PER_ATOM))
        errors_teacher.append(energy - teacher)
        assert np.all(np.isfinite(probe.get_forces()))
    assert np.abs(errors_reference).mean() < 0.03 < OFFSET_PER_ATOM - 0.03 < np.abs(errors_teacher).mean()
    card = (export_run(three_stage_run.run_dir, potential.parent / "exported", compiled=False) / "MODEL_CARD.md").read_text()
    assert "1. **distill**" in card and "2. **fine-tune**" in card and "3. **qat**" in card
    errors = [line for line in card.split("## Errors")[1].split("##")[0].splitlines() if line.startswith("| stage")]
    counts = [len(stage["valid_indices"]) for stage in metadata["training"]["stages"]]
    assert [line.rsplit("|", 2)[1].strip() for line in errors] == [str(count) for count in counts]  # from the stages


def test_fine_tune_is_skipped_with_a_notice_without_reference_labels(config_dir, cells, tmp_path, capsys):
    path = write_label_file(tmp_path / "teacher_only.h5", cells[:24])
    result = train(_config(config_dir, path, tmp_path / "run", "data.n_valid=4", "stages.0.trainer.max_epochs=1",
                           "+stages.2.freeze=[embedding]"))
    assert "stage 2 (fine-tune): skipped, the label file has no 'reference' labels" in capsys.readouterr().out
    rows = read_curves_csv(result.run_dir / "curves.csv")
    assert sorted({int(r["stage"]) for r in rows}) == [1, 3]
    assert not (result.run_dir / "stages" / "2-fine-tune").exists()
    # the QAT stage started from the distilled weights (a fresh embedding would be random) and left
    # the frozen embedding as it was
    distilled = load_potential(result.run_dir / "stages" / "1-distill" / "potential").model.state_dict()
    final = load_potential(result.potential_dir).model.state_dict()
    embedding = [key for key in final if key.startswith("embedding.")]
    assert embedding and all(torch.equal(final[key], distilled[key]) for key in embedding)


def test_a_stage_with_an_unknown_setting_is_a_one_line_error(config_dir, two_source_file, tmp_path):
    with pytest.raises(ConfigError, match=r"stage 1 \(distill\): unknown setting\(s\) learning_rate"):
        train(_config(config_dir, two_source_file, tmp_path, "+stages.0.learning_rate=0.1"))
    with pytest.raises(ConfigError, match=r"stage 1 \(distill\): freeze prefix 'nothing' matches no parameter"):
        train(_config(config_dir, two_source_file, tmp_path, "+stages.0.freeze=[nothing]"))


TRAIN_SCRIPT = ("import sys; from mlip_distill.training.run import compose_config, train; "
                "train(compose_config(sys.argv[2:], config_dir=sys.argv[1]))")


def test_a_run_killed_in_stage_two_resumes_there_and_ends_as_uninterrupted(config_dir, two_source_file, tmp_path):
    overrides = [*TINY, f"data.path={two_source_file}", "stages.1.trainer.max_epochs=6",
                 "resume=auto", "seed=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions in this process as in the killed one
    try:
        reference = train(compose_config([*overrides, f"run_dir={tmp_path / 'reference'}"], config_dir=config_dir))
        killed = tmp_path / "killed"
        command = [sys.executable, "-c", TRAIN_SCRIPT, str(config_dir), *overrides, f"run_dir={killed}"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        second = killed / "stages" / "2-fine-tune" / "checkpoints" / "last.ckpt"
        deadline = time.time() + 120
        while not second.is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # into a later epoch of stage 2
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
        assert (killed / "stages" / "1-distill" / "stage.json").is_file()
        assert not (killed / "stages" / "2-fine-tune" / "stage.json").exists()
        assert not (killed / "stages" / "3-qat").exists()

        resumed = train(compose_config([*overrides, f"run_dir={killed}"], config_dir=config_dir))
    finally:
        torch.set_num_threads(threads)

    expected, got = read_curves_csv(reference.run_dir / "curves.csv"), read_curves_csv(resumed.run_dir / "curves.csv")
    assert [r["stage"] for r in got] == [r["stage"] for r in expected] == [1.0] * 2 + [2.0] * 6 + [3.0]
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=1e-6, abs=1e-12), (want["epoch"], key)
    final_reference = load_file(reference.potential_dir / "weights.safetensors")
    final_resumed = load_file(resumed.potential_dir / "weights.safetensors")
    for name, value in final_reference.items():
        np.testing.assert_allclose(final_resumed[name].float().numpy(), value.float().numpy(), rtol=1e-6, atol=1e-9)


def test_resume_auto_without_run_dir_finds_a_run_by_its_stage_checkpoints(tmp_path):
    from mlip_distill.training.checkpoint import latest_resumable_run

    for name, age, where in (("20260101-000000-aaaaaa", 100, "checkpoints"),
                             ("20260102-000000-bbbbbb", 10, "stages/2-fine-tune/checkpoints")):
        (tmp_path / name / where).mkdir(parents=True)
        last = tmp_path / name / where / "last.ckpt"
        last.write_bytes(b"")
        os.utime(last, (time.time() - age, time.time() - age))
    assert latest_resumable_run(tmp_path) == tmp_path / "20260102-000000-bbbbbb"
