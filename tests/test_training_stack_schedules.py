"""Learning-rate schedules: linear warmup, then cosine, plateau or constant."""

from __future__ import annotations

import math

import pytest
import torch

from mlip_distill.training.errors import ConfigError
from mlip_distill.training.schedules import build_schedulers


def rates(options, total_steps, steps, plateau_metric=None):
    """The learning rate used at each optimiser step, stepping schedulers as Lightning does
    (``interval: step`` every step; ``interval: epoch`` every 10 steps here)."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    configs = build_schedulers(optimizer, options, total_steps)
    used = []
    for step in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        for config in configs:
            if config["interval"] == "step":
                config["scheduler"].step()
            elif (step + 1) % 10 == 0:
                config["scheduler"].step(plateau_metric)
    return used


def test_warmup_is_linear_then_cosine_reaches_its_floor():
    used = rates({"name": "cosine", "warmup_steps": 10, "eta_min": 0.01}, total_steps=110, steps=110)
    assert used[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])
    assert used[10] == pytest.approx(1.0)
    # cosine: half way through the decay the rate is the mean of lr and eta_min
    assert used[60] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 50 / 100)))
    assert all(a >= b for a, b in zip(used[10:], used[11:]))
    assert used[-1] == pytest.approx(0.01, abs=1e-3)


def test_constant_after_warmup_and_no_warmup_when_zero():
    used = rates({"name": "constant", "warmup_steps": 5}, total_steps=50, steps=20)
    assert used[0] == pytest.approx(0.2) and used[5:] == pytest.approx([1.0] * 15)
    assert rates({"name": "constant", "warmup_steps": 0}, total_steps=50, steps=5) == [1.0] * 5


def test_a_plateau_during_warmup_is_kept():
    # the metric never improves: the plateau schedule halves the rate after each epoch beyond patience
    used = rates({"name": "plateau", "warmup_steps": 30, "factor": 0.5, "patience": 0, "min_lr": 0.0},
                 total_steps=100, steps=40, plateau_metric=1.0)
    # first epoch sets the best; the reduction at the end of the second epoch (step 20) is kept
    # through the rest of the warmup, so the rate ends at half of lr, then a quarter
    assert used[19] == pytest.approx(20 / 30)
    assert used[20] == pytest.approx(0.5 * 21 / 30)
    assert used[29] == pytest.approx(0.5 * 30 / 30)
    assert used[30] == pytest.approx(0.25)


def test_bad_schedule_settings_are_named():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="scheduler.name 'linear'"):
        build_schedulers(optimizer, {"name": "linear"}, 10)
    with pytest.raises(ConfigError, match="max_epochs"):
        build_schedulers(optimizer, {"name": "cosine", "warmup_steps": 0}, float("inf"))
    # an experiment's cosine floor left over after `scheduler=plateau` on the command line
    with pytest.raises(ConfigError, match=r"scheduler=plateau: unknown setting\(s\) eta_min; drop with ~scheduler.eta_min"):
        build_schedulers(optimizer, {"name": "plateau", "eta_min": 1e-5}, 10)
    with pytest.raises(ConfigError, match=r"scheduler=constant: unknown setting\(s\) factor"):
        build_schedulers(optimizer, {"name": "constant", "factor": 0.5}, 10)


def test_cosine_of_a_time_limited_run_ends_at_its_floor_when_the_time_is_up():
    # 1,000 steps planned, but the wall-time limit is used up after 50: the cosine follows the
    # time and is at eta_min from step 50 on, instead of staying near lr for the whole short run
    clock = {"step": 0}
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    (config,) = build_schedulers(
        optimizer, {"name": "cosine", "warmup_steps": 0, "eta_min": 0.01}, 1000,
        time_fraction=lambda: min(clock["step"] / 50, 1.0),
    )
    used = []
    for step in range(60):
        clock["step"] = step
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        config["scheduler"].step()
    assert used[26] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 25 / 50)))
    assert used[52:] == pytest.approx([0.01] * 8)


def test_the_module_reads_the_share_of_the_time_limit_from_lightnings_timer():
    from pytorch_lightning.callbacks import Timer

    from mlip_distill.training.module import StudentModule

    timer = Timer(duration={"seconds": 1000})
    timer.on_train_start(None, None)
    module = StudentModule.__new__(StudentModule)  # only its trainer is read
    fake_trainer = type("FakeTrainer", (), {"callbacks": [timer]})()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StudentModule, "trainer", property(lambda self: fake_trainer))
        share = module._time_fraction()
        assert share is not None and 0.0 <= share() < 0.01
        fake_trainer.callbacks = []
        assert module._time_fraction() is None
