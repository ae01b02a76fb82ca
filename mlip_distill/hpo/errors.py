"""The one exception a hyperparameter search raises for bad input."""

from __future__ import annotations


class SearchError(ValueError):
    """A search that cannot run: an empty or inconsistent space, an objective metric the runs do
    not log, a study file that belongs to another search. The message is one line naming the
    offending key; the command line prints it without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
