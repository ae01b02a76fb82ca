"""Hyperparameter search for distillation (`mlip-distill hpo`), built on Optuna.

- :mod:`.space`: the search space of the ``hpo`` config group, as Hydra overrides of training;
- :mod:`.objective`: the minimised validation metric and the pruning callback;
- :mod:`.study`: the SQLite study that searches resume and share between processes;
- :mod:`.results`: ``trials.csv``, ``best.yaml``, plots and ``SUMMARY.md``.
"""

from .errors import SearchError
from .results import SearchResult
from .study import run_search

__all__ = ["SearchError", "SearchResult", "run_search"]
