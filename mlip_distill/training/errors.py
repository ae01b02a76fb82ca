"""Errors of training that the command line reports in one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A training config that cannot run (a required setting left unset, say)."""


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses or gradients for too many consecutive steps."""
