"""A search's results in its folder, rewritten after every trial:

- ``trials.csv``: every trial's state, parameters, objective, errors (meV units), epochs, seconds,
  run folder and the overrides that rerun it with ``mlip-distill train``;
- ``best.yaml``: the best trial's full config as a Hydra experiment
  (``mlip-distill train --config-dir <folder> experiment=best``);
- ``history.png``: the objective of every trial and the best so far;
- ``importance.png``: how much each parameter mattered (Optuna's PED-ANOVA importances);
- ``SUMMARY.md``: the best configuration, its gain over the unchanged training config, the
  spread of results and the search settings.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from .config import Search


@dataclass
class SearchResult:
    """Where a search's results are and what it found so far."""

    out: Path
    n_complete: int
    n_pruned: int
    n_failed: int
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def trials_table(trials: Sequence[FrozenTrial], search: Search) -> list[dict[str, Any]]:
    """One row per trial, the columns of ``trials.csv``."""
    error_names = sorted({name for trial in trials for name in trial.user_attrs.get("errors", {})})
    rows = []
    for trial in trials:
        errors = trial.user_attrs.get("errors", {})
        rows.append({
            "number": trial.number,
            "state": trial.state.name.lower(),
            "objective": trial.value if trial.state == TrialState.COMPLETE else "",
            **{parameter.name: trial.params.get(parameter.name, "") for parameter in search.space},
            **{name: errors.get(name, "") for name in error_names},
            "epochs": len(trial.intermediate_values) or "",
            "seconds": trial.user_attrs.get("seconds", ""),
            "baseline": bool(trial.user_attrs.get("baseline", False)),
            "retry_of": trial.user_attrs.get("retry_of", ""),
            "error": trial.user_attrs.get("error", ""),
            "run_dir": trial.user_attrs.get("run_dir", ""),
            "overrides": " ".join(trial.user_attrs.get("overrides", [])),
        })
    return rows


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({key: _number(value) for key, value in row.items()} for row in rows)
    return buffer.getvalue().encode()


def best_config_yaml(best: FrozenTrial, search: Search) -> str:
    """The best trial's config as a Hydra experiment: its config groups chosen as in the trial,
    then every setting of its ``config.yaml``."""
    config = OmegaConf.to_container(OmegaConf.load(Path(best.user_attrs["run_dir"]) / "config.yaml"))
    config["run_dir"] = None
    config["experiment_name"] = f"{search.name}_best"
    groups = [{f"override /{group}": option} for group, option in best.user_attrs["choices"].items() if group != "experiment"]
    header = (
        "# @package _global_\n"
        f"# The best trial ({best.number}) of the search '{search.name}': "
        f"{search.objective.describe()} = {best.value:.4g}\n"
        f"# Train with it: mlip-distill train --config-dir {search.out} experiment=best [trainer.max_epochs=N ...]\n"
    )
    return header + OmegaConf.to_yaml(OmegaConf.create({"defaults": [*groups, "_self_"], **config}))


def _plot_history(trials: Sequence[FrozenTrial], path: Path) -> None:
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    pruned = [trial for trial in trials if trial.state == TrialState.PRUNED and trial.intermediate_values]
    axes.scatter([t.number for t in complete], [t.value for t in complete], label="complete", zorder=3)
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        axes.scatter([t.number for t in pruned], last, marker="x", color="grey", label="pruned (last epoch)")
    baseline = [t for t in complete if t.user_attrs.get("baseline")]
    if baseline:
        axes.scatter([baseline[0].number], [baseline[0].value], marker="*", s=200, color="C3",
                     label="training config as given", zorder=4)
    best, numbers, bests = float("inf"), [], []
    for trial in complete:
        best = min(best, trial.value)
        numbers.append(trial.number)
        bests.append(best)
    axes.step(numbers, bests, where="post", color="C1", label="best so far")
    axes.set_xlabel("trial")
    axes.set_ylabel("objective (meV units)")
    axes.set_title("Optimisation history")
    axes.legend()
    _save(figure, path)


def _importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Optuna's PED-ANOVA importances, or none and the reason (too few complete trials)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            )
    except (RuntimeError, ValueError) as error:
        return {}, str(error).splitlines()[0]
    too_few = [str(warning.message) for warning in caught if "importances will be equal" in str(warning.message)]
    return ({}, too_few[0]) if too_few else (importances, "")


def _plot_importance(study: optuna.Study, path: Path) -> None:
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    importances, reason = _importances(study)
    if importances:
        names = list(importances)[::-1]
        axes.barh(names, [importances[name] for name in names])
        axes.set_xlabel("importance (PED-ANOVA)")
    else:
        axes.text(0.5, 0.5, f"no importances yet:\n{reason}", ha="center", va="center", wrap=True)
        axes.set_axis_off()
    axes.set_title("Parameter importances")
    _save(figure, path)


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    _replace(path, buffer.getvalue())


def _summary(trials: Sequence[FrozenTrial], search: Search, best: FrozenTrial | None) -> str:
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    counts = {state: sum(trial.state == state for trial in trials) for state in TrialState}
    lines = [f"# Hyperparameter search '{search.name}'", ""]
    baseline = next((trial for trial in complete if trial.user_attrs.get("baseline")), None)
    if best is None:
        lines += ["No trial has completed yet.", ""]
    else:
        lines += [f"Best: trial {best.number}, objective **{best.value:.4g}** ({search.objective.describe()}, "
                  "meV units, on the held-out structures)."]
        if baseline is not None:
            gain = 100 * (baseline.value - best.value) / baseline.value
            lines += [f"The training config as given (trial {baseline.number}) reached {baseline.value:.4g}: "
                      f"the best is {gain:.1f} % lower."]
        lines += ["", "| parameter | setting | best | as given | searched |", "|---|---|---|---|---|"]
        for parameter in search.space:
            given = (search.base_values or {}).get(parameter.name, "")
            lines.append(f"| {parameter.name} | `{parameter.key}` | {_number(best.params[parameter.name])} | "
                         f"{_number(given)} | {parameter.describe()} |")
        errors = best.user_attrs.get("errors", {})
        lines += ["", "Errors of the best trial on the held-out structures:", "",
                  "| error | best | as given |", "|---|---|---|"]
        for name, value in errors.items():
            given = baseline.user_attrs.get("errors", {}).get(name, "") if baseline is not None else ""
            lines.append(f"| {name} | {_number(value)} | {_number(given)} |")
        lines += ["", f"Train with it: `mlip-distill train --config-dir {search.out} experiment=best` "
                  "(`best.yaml`; add e.g. `trainer.max_epochs=200` for a full training).", ""]
    lines += ["## Spread", "",
              f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
              f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running, "
              f"{counts[TrialState.WAITING]} queued."]
    values = sorted(trial.value for trial in complete)
    if values:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines += [f"Objective of the complete trials: best {values[0]:.4g}, median {statistics.median(values):.4g}, "
                  f"worst {values[-1]:.4g}, standard deviation {spread:.3g}.", "",
                  "| trial | objective | " + " | ".join(p.name for p in search.space) + " |",
                  "|---|---|" + "---|" * len(search.space)]
        for trial in sorted(complete, key=lambda t: t.value)[:10]:
            lines.append(f"| {trial.number} | {trial.value:.4g} | "
                         + " | ".join(_number(trial.params[p.name]) for p in search.space) + " |")
    lines += ["", "![history](history.png) ![importance](importance.png)", "", "## Search settings", ""]
    lines += [f"- {key}: {value}" for key, value in search.describe().items()]
    lines += [f"- space: {', '.join(f'{p.name} = {p.describe()}' for p in search.space)}",
              f"- command: `{search.command}`", ""]
    return "\n".join(lines)


def write_results(study: optuna.Study, search: Search) -> SearchResult:
    """Write every result file of ``study`` into ``search.out`` and say what it holds."""
    trials = study.get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    best = min(complete, key=lambda trial: trial.value) if complete else None
    out = search.out
    _replace(out / "trials.csv", _csv(trials_table(trials, search)))
    if best is not None:
        _replace(out / "best.yaml", best_config_yaml(best, search).encode())
        link = out / "experiment" / "best.yaml"
        if not link.is_symlink():
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(Path("..") / "best.yaml")
    _plot_history(trials, out / "history.png")
    _plot_importance(study, out / "importance.png")
    _replace(out / "SUMMARY.md", _summary(trials, search, best).encode())
    return SearchResult(
        out=out,
        n_complete=len(complete),
        n_pruned=sum(trial.state == TrialState.PRUNED for trial in trials),
        n_failed=sum(trial.state == TrialState.FAIL for trial in trials),
        best_number=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
    )
