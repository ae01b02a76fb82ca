"""The packaged Hydra config groups of `mlip-distill train` (YAML files beside this one)."""

from __future__ import annotations

from importlib import resources


def config_groups() -> dict[str, list[str]]:
    """The config groups and their options, e.g. ``{"model": ["nequip", "painn"], ...}``."""
    root = resources.files(__name__)
    return {
        group.name: sorted(item.name.removesuffix(".yaml") for item in group.iterdir() if item.name.endswith(".yaml"))
        for group in sorted(root.iterdir(), key=lambda item: item.name)
        if group.is_dir() and not group.name.startswith("__")
    }
