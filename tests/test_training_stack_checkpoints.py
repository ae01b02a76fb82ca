"""Checkpoints: what they hold, every-N-epoch copies, and an exact resume after a real kill."""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from mlip_distill.checksums import file_sha256
from mlip_distill.training.checkpoint import last_checkpoint, latest_resumable_run, read_checkpoint
from mlip_distill.training.run import compose_config, train

TINY = ["model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
        "data.n_valid=8", "data.batch_size=8", "logger=csv"]


def test_checkpoint_holds_states_and_provenance(copper_label_file, tmp_path):
    overrides = [f"data.path={copper_label_file}", f"run_dir={tmp_path}", *TINY, "trainer.max_epochs=4",
                 "checkpoints.every_n_epochs=2", "scheduler=cosine", "scheduler.warmup_steps=3"]
    config = compose_config(overrides)
    train(config)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "epoch0001.ckpt", "epoch0003.ckpt", "last.ckpt"]
    checkpoint = read_checkpoint(folder / "last.ckpt")  # weights_only: nothing in it runs code
    assert checkpoint["epoch"] == 3 and checkpoint["global_step"] == 16
    assert "exp_avg" in checkpoint["optimizer_states"][0]["state"][0]  # AdamW moments
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 16  # the per-step schedule's position
    assert checkpoint["callbacks"]["ema"]["updates"] == 16
    assert len(checkpoint["callbacks"]["curves"]["rows"]) == 4
    rng = checkpoint["rng"]
    assert rng["torch"].dtype == torch.uint8 and rng["numpy"]["kind"] == "MT19937" and len(rng["python"]["internal"]) == 625
    run = checkpoint["run"]
    assert run["run_id"] == tmp_path.name
    assert run["config"] == OmegaConf.to_container(config, resolve=True)
    assert run["data"]["sha256"] == file_sha256(copper_label_file)
    assert set(run["versions"]) >= {"mlip_distill", "torch", "e3nn", "pytorch_lightning"}
    assert run["git_commit"] is None or len(run["git_commit"]) == 40
    assert not list(tmp_path.rglob("*.tmp"))


def test_resuming_with_changed_settings_warns(copper_label_file, tmp_path, caplog):
    overrides = [f"data.path={copper_label_file}", f"run_dir={tmp_path}", *TINY, "scheduler.warmup_steps=2"]
    train(compose_config([*overrides, "trainer.max_epochs=1"]))
    with caplog.at_level(logging.WARNING, logger="mlip_distill.training"):
        result = train(compose_config([*overrides, "trainer.max_epochs=2", "resume=auto", "optimizer.lr=0.001"]))
    warnings = [r.getMessage() for r in caplog.records if "settings changed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith(": optimizer.lr")  # not max_epochs, resume
    assert len(curves(result.run_dir)) == 2  # one epoch more


def test_resume_auto_finds_the_newest_run_with_a_checkpoint(tmp_path):
    for name, age in (("20260101-000000-aaaaaa", 100), ("20260102-000000-bbbbbb", 10), ("20260103-000000-cccccc", None)):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        if age is not None:
            last = tmp_path / name / "checkpoints" / "last.ckpt"
            last.write_bytes(b"")
            os.utime(last, (time.time() - age, time.time() - age))
    assert latest_resumable_run(tmp_path) == tmp_path / "20260102-000000-bbbbbb"
    assert last_checkpoint(tmp_path / "20260103-000000-cccccc") is None
    assert latest_resumable_run(tmp_path / "nothing") is None


def test_resume_from_a_missing_checkpoint_is_a_one_line_error(copper_label_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=.*no such checkpoint"):
        train(compose_config([f"data.path={copper_label_file}", f"run_dir={tmp_path}", *TINY,
                              f"resume={tmp_path / 'none.ckpt'}"]))


TRAIN_SCRIPT = "import sys; from mlip_distill.training.run import compose_config, train; train(compose_config(sys.argv[1:]))"


def curves(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "curves.csv") as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


def test_a_run_killed_and_resumed_follows_the_uninterrupted_curve(copper_label_file, tmp_path):
    overrides = [f"data.path={copper_label_file}", *TINY, "trainer.max_epochs=12", "scheduler=cosine",
                 "scheduler.warmup_steps=6", "ema.decay=0.9", "seed=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions in this process as in the killed one
    try:
        reference = train(compose_config([*overrides, f"run_dir={tmp_path / 'reference'}"]))

        killed = tmp_path / "killed"
        process = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, *overrides, f"run_dir={killed}"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while last_checkpoint(killed) is None and time.time() < deadline and process.poll() is None:
            time.sleep(0.02)
        # at once: on a quiet machine the tiny run's remaining epochs take well under a second
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
        assert not (killed / "curves.csv").exists()  # it did not finish
        stopped_at = read_checkpoint(killed / "checkpoints" / "last.ckpt")["epoch"]
        assert stopped_at < 11

        resumed = train(compose_config([*overrides, f"run_dir={killed}", "resume=auto"]))
    finally:
        torch.set_num_threads(threads)

    expected, got = curves(reference.run_dir), curves(resumed.run_dir)
    assert [row["epoch"] for row in got] == list(range(12))
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            assert have[key] == pytest.approx(want[key], rel=1e-6, abs=1e-12), (want["epoch"], key)
    final_reference = load_file(reference.potential_dir / "weights.safetensors")
    final_resumed = load_file(resumed.potential_dir / "weights.safetensors")
    for name, value in final_reference.items():
        np.testing.assert_allclose(final_resumed[name].numpy(), value.numpy(), rtol=1e-6, atol=1e-9)
