"""The study: an Optuna study in SQLite (or any database Optuna supports) that every worker of a
search shares, and the loop that runs its trials.

Each trial is an ordinary training run in ``<out>/trials/<number>/`` (``config.yaml`` holds its
full config; ``trials.csv`` gives the overrides that rerun it with ``mlip-distill train``).

- Resuming: the same command again continues the study. Finished trials are kept; a trial that
  was interrupted (Ctrl-C, a killed process, a lost machine: no heartbeat for two minutes) is
  marked failed and its parameters are run again first.
- Several workers: start the same command in several processes, or on several machines that share
  a database server. On one machine a lock file beside the SQLite file makes "is budget left? then
  take the next trial" one step, so workers never overrun the budget nor take one grid point twice.
- A study records its search (space, objective, sampler, training config); a different search
  cannot resume it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..training.run import train
from .config import Search, compose_training
from .errors import SearchError
from .objective import ReportToTrial, final_errors
from .results import SearchResult, write_results

HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _retry(study: optuna.Study, trial: FrozenTrial, n_parameters: int) -> None:
    """Queue the parameters of an interrupted trial again, so that the study still runs them."""
    if len(trial.params) == n_parameters:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _storage(search: Search) -> optuna.storages.RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            search.storage,
            engine_kwargs={"connect_args": {"timeout": 120}} if search.sqlite_path else None,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=lambda study, trial: _retry(study, trial, len(search.space)),
        )


@contextmanager
def _exclusive(search: Search) -> Iterator[None]:
    """Hold the lock file beside the study's SQLite file (nothing for a database server)."""
    if search.sqlite_path is None:
        yield
        return
    search.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    with open(search.sqlite_path.with_name(search.sqlite_path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, whose end the search's budget decides: its own end calls
    ``Study.stop``, which works only inside ``Study.optimize``."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def _sampler(search: Search, worker_index: int) -> optuna.samplers.BaseSampler:
    if search.sampler == "grid":
        # every worker must number the grid points alike: one seed for all
        grid = {parameter.name: list(parameter.choices) for parameter in search.space}
        return _GridSampler(grid, seed=search.seed)
    # a worker of its own seed, so that workers and resumed searches do not redraw the same points
    return optuna.samplers.TPESampler(seed=search.seed + 1000 * worker_index, n_startup_trials=search.startup_trials)


def _pruner(search: Search) -> optuna.pruners.BasePruner:
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials,
                                       n_warmup_steps=search.pruner_warmup_epochs)


def _first_difference(ours: Any, theirs: Any, path: str = "") -> str:
    """The first dotted key where two records differ."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                return _first_difference(ours.get(key), theirs.get(key), f"{path}.{key}" if path else key)
    return f"{path}: this search has {ours!r}, the study {theirs!r}"


def open_study(search: Search, storage: optuna.storages.RDBStorage | None = None) -> tuple[optuna.Study, int]:
    """Create the search's study, or load it and check that it belongs to this search.

    Returns the study (with this worker's sampler) and this worker's index in it (0 for the
    first worker of a new study). Must be called under :func:`_exclusive`.
    """
    storage = storage or _storage(search)
    record = search.record()
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if search.name not in names:
        if names:
            raise SearchError(f"{search.storage}: holds the study '{names[0]}', not '{search.name}': it belongs to "
                              "another search; give this search its own --out or hpo.storage")
        study = optuna.create_study(storage=storage, study_name=search.name, direction="minimize")
        study.set_user_attr("search", record)
        if search.include_base and search.sampler == "tpe" and search.base_values is not None:
            study.enqueue_trial(search.base_values, user_attrs={"baseline": True})
    else:
        study = optuna.load_study(study_name=search.name, storage=storage)
        theirs = study.user_attrs.get("search")
        if theirs != record:
            where = _first_difference(record, theirs) if isinstance(theirs, dict) else "it records no search"
            raise SearchError(f"{search.storage}: study '{search.name}' belongs to another search ({where}); "
                              "give this search its own --out, or delete the study file to start afresh")
    index = int(study.user_attrs.get("workers", 0))
    study.set_user_attr("workers", index + 1)
    study = optuna.load_study(study_name=search.name, storage=storage,
                              sampler=_sampler(search, index), pruner=_pruner(search))
    return study, index


def _fail_abandoned(study: optuna.Study, n_parameters: int) -> None:
    """Mark failed the running trials of workers on this machine that no longer exist (killed),
    and those of other machines without a heartbeat; queue their parameters again."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)
            _retry(study, trial, n_parameters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trials_used(trials: list[FrozenTrial]) -> int:
    """Trials that count against the budget: finished, running, or failed by an error of their
    own (an interrupted trial does not count: its parameters are queued again)."""
    return sum(
        trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (trial.state == TrialState.FAIL and "error" in trial.user_attrs)
        for trial in trials
    )


def _next_trial(study: optuna.Study, search: Search) -> optuna.Trial | None:
    """The next trial to run (queued ones first), or ``None`` when the budget is spent."""
    _fail_abandoned(study, len(search.space))
    trials = study.get_trials(deepcopy=False)
    queued = any(trial.state == TrialState.WAITING for trial in trials)
    if not queued and search.budget is not None and trials_used(trials) >= search.budget:
        return None
    with warnings.catch_warnings():
        # the heartbeat is kept by _heartbeat below, not by Study.optimize
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()
    trial.set_user_attr("worker", _worker())
    return trial


@contextmanager
def _heartbeat(storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat while it runs, so that other workers see it is alive."""
    stop = threading.Event()
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run_trial(
    study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial, search: Search,
    log: Callable[[str], None],
) -> None:
    """Train one trial and tell the study how it went."""
    values = {parameter.name: parameter.suggest(trial) for parameter in search.space}
    overrides = [*search.train_overrides, *(parameter.override(values[parameter.name]) for parameter in search.space)]
    run_dir = search.out / "trials" / f"{trial.number:04d}"
    composed = compose_training([*overrides, f"run_dir={run_dir}"], search.config_dir)
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("choices", composed.choices)
    trial.set_user_attr("run_dir", str(run_dir))
    described = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                          for name, value in values.items())
    log(f"trial {trial.number}: {described}")
    start = time.perf_counter()
    try:
        with _heartbeat(storage, trial):
            result = train(composed.config, callbacks=[ReportToTrial(trial, search.objective)])
            errors = final_errors(search.objective, result, composed.config.data.path)
            value = search.objective.value(errors)
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("seconds", time.perf_counter() - start)
        study.tell(trial, state=TrialState.PRUNED)
        log(f"trial {trial.number}: {pruned}")
        return
    except SearchError as error:
        trial.set_user_attr("error", str(error))
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as error:  # a trial's own failure (diverged, out of memory): the search goes on
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        trial.set_user_attr("error", message)
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number}: failed: {message}")
        return
    except BaseException:  # Ctrl-C or exit: run these parameters again when the search resumes
        study.tell(trial, state=TrialState.FAIL)
        _retry(study, study.get_trials(deepcopy=False)[trial.number], len(search.space))
        raise
    trial.set_user_attr("errors", errors)
    trial.set_user_attr("seconds", time.perf_counter() - start)
    study.tell(trial, value)
    log(f"trial {trial.number}: objective {value:.4g} in {time.perf_counter() - start:.0f} s")


def run_search(search: Search, log: Callable[[str], None] = print) -> SearchResult:
    """Run (or resume, or join) a search until its budget is spent, then write its results.

    Results in ``search.out``: ``trials.csv``, ``best.yaml``, ``history.png``,
    ``importance.png`` and ``SUMMARY.md`` (see :mod:`mlip_distill.hpo.results`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search.out.mkdir(parents=True, exist_ok=True)
    with _exclusive(search):  # two workers must not create the database's tables at once
        storage = _storage(search)
        study, _ = open_study(search, storage)
    start = time.monotonic()
    while search.max_minutes is None or time.monotonic() - start < 60 * search.max_minutes:
        with _exclusive(search):
            trial = _next_trial(study, search)
        if trial is None:
            break
        _run_trial(study, storage, trial, search, log)
        with _exclusive(search):
            write_results(study, search)
    with _exclusive(search):
        return write_results(study, search)
