"""Exponential moving average of the weights: the recurrence, the swap, and that validation,
checkpoints and the exported potential use it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mlip_distill.training.checkpoint import read_checkpoint
from mlip_distill.training.ema import WeightAverage
from mlip_distill.training.run import compose_config, train

TINY = ["model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
        "data.n_valid=8", "data.batch_size=8", "scheduler.warmup_steps=2", "logger=csv", "trainer.max_epochs=3"]


def test_average_follows_the_recurrence_and_swaps_back():
    module = SimpleNamespace(model=torch.nn.Linear(2, 1))
    trainer = SimpleNamespace(global_step=0)
    average = WeightAverage(decay=0.9)
    average.on_fit_start(trainer, module)
    expected = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    for step in range(1, 30):
        with torch.no_grad():
            for p in module.model.parameters():
                p.add_(1.0)
        trainer.global_step = step
        average.on_train_batch_end(trainer, module, None, None, 0)
        average.on_train_batch_end(trainer, module, None, None, 0)  # no new step: no update
        decay = min(0.9, (1 + step) / (10 + step))
        for name, p in module.model.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * p.detach()
    for name, value in expected.items():
        torch.testing.assert_close(average.average[name], value)
    weights = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    average.on_validation_epoch_start(trainer, module)
    torch.testing.assert_close(module.model.weight, expected["weight"])
    with pytest.raises(RuntimeError, match="already swapped"):
        average.on_validation_epoch_start(trainer, module)
    average.on_validation_epoch_end(trainer, module)
    torch.testing.assert_close(module.model.weight, weights["weight"])
    average.on_test_epoch_start(trainer, module)  # testing uses the average too
    torch.testing.assert_close(module.model.weight, expected["weight"])
    average.on_test_epoch_end(trainer, module)
    torch.testing.assert_close(module.model.weight, weights["weight"])

    restored = WeightAverage(decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 29 and restored.last_step == 29
    torch.testing.assert_close(restored.average["bias"], expected["bias"])


@pytest.fixture(scope="module")
def averaged_run(copper_label_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ema")
    return train(compose_config([f"data.path={copper_label_file}", f"run_dir={run_dir}", *TINY, "ema.decay=0.9"]))


def test_checkpoints_hold_the_average_beside_the_training_weights(averaged_run):
    checkpoint = read_checkpoint(averaged_run.run_dir / "checkpoints" / "last.ckpt")
    average = checkpoint["callbacks"]["ema"]["average"]
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    assert set(average) <= set(weights) and average
    assert any(not torch.equal(average[k], weights[k]) for k in average)
    assert checkpoint["callbacks"]["ema"]["updates"] == checkpoint["global_step"] == 12


def test_export_and_validation_use_the_average_of_the_best_epoch(averaged_run):
    best = read_checkpoint(averaged_run.run_dir / "checkpoints" / "best.ckpt")
    exported = load_file(averaged_run.potential_dir / "weights.safetensors")
    for name, value in best["callbacks"]["ema"]["average"].items():
        torch.testing.assert_close(exported[name], value.to(exported[name].dtype))
    # the export's force error, measured afresh after training, is the best epoch's validation
    # error: validation ran with the averaged weights that were exported
    assert averaged_run.metrics["forces_rmse_mev_per_A"] == pytest.approx(
        float(best["callbacks"][next(k for k in best["callbacks"] if "'monitor': 'val_" in k)]["best_model_score"]),
        rel=1e-5,
    )


def test_averaging_can_be_turned_off(copper_label_file, tmp_path):
    result = train(compose_config([f"data.path={copper_label_file}", f"run_dir={tmp_path}", *TINY,
                                   "trainer.max_epochs=1", "ema.enabled=false"]))
    best = read_checkpoint(result.run_dir / "checkpoints" / "best.ckpt")
    assert "ema" not in best["callbacks"]
    exported = load_file(result.potential_dir / "weights.safetensors")
    for name in ("embedding.weight", "readout.0.weight"):
        torch.testing.assert_close(exported[name], best["state_dict"][f"model.{name}"])
