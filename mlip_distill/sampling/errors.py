"""The exception sampling raises for a bad request."""

from __future__ import annotations


class SamplingError(ValueError):
    """A seed spec that cannot be read, or sampling settings that cannot produce structures.

    The message is one line the command line prints without a traceback.
    """
