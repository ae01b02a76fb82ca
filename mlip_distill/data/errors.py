"""The one exception the data layer raises for bad input."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: a missing, unreadable or inconsistent file or structure.

    The message is one line that names the file (and the structure index where there is one) and
    the problem, e.g. ``labels.h5: structure 12: forces have shape (7, 3) but the structure has
    8 atoms``; the command line prints it without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
