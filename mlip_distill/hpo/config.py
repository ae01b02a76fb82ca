"""A search's settings: the ``hpo`` config group, the training config its trials start from,
and the Hydra composition of each trial's training config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from ..configs import config_groups
from ..training.run import compose_config
from .errors import SearchError
from .objective import Objective
from .space import Parameter, base_values, parse_space

SAMPLERS = ("tpe", "grid")
PRUNERS = ("median", "none")


@dataclass
class Composed:
    """A training config and the option chosen in each config group (``{"model": "nequip", ...}``)."""

    config: DictConfig
    choices: dict[str, str]


def compose_training(overrides: Sequence[str], config_dir: str | Path | None = None) -> Composed:
    """The training config of ``mlip-distill train <overrides>``, with its group choices."""
    config = compose_config(overrides, config_dir, return_hydra_config=True)
    choices = {group: str(option) for group, option in config.hydra.runtime.choices.items()
               if option is not None and not group.startswith("hydra")}
    with open_dict(config):
        del config["hydra"]
    return Composed(config, choices)


def _groups(config_dir: str | Path | None) -> dict[str, list[str]]:
    """Packaged config groups and their options, with those of ``config_dir`` added."""
    groups = config_groups()
    if config_dir is not None:
        for folder in sorted(Path(config_dir).iterdir()):
            options = sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []
            if options:
                groups[folder.name] = sorted(set(groups.get(folder.name, [])) | set(options))
    return groups


@dataclass
class Search:
    """Everything one search needs, checked before its first trial."""

    name: str
    out: Path
    storage: str
    sampler: str
    seed: int
    startup_trials: int
    n_trials: int | None
    max_minutes: float | None
    include_base: bool
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    objective: Objective
    space: list[Parameter]
    train_overrides: list[str]
    base: Composed
    config_dir: str | None
    base_values: dict[str, Any] | None = field(default=None)
    command: str = ""

    @property
    def sqlite_path(self) -> Path | None:
        """The study's SQLite file, or ``None`` for a database server."""
        prefix = "sqlite:///"
        return Path(self.storage[len(prefix):]) if self.storage.startswith(prefix) else None

    @property
    def budget(self) -> int | None:
        """Trials the whole study runs (all workers together); ``None``: until ``max_minutes``."""
        if self.sampler == "grid":
            size = 1
            for parameter in self.space:
                size *= len(parameter.choices)
            return size if self.n_trials is None else min(size, self.n_trials)
        return self.n_trials

    def record(self) -> dict[str, Any]:
        """What makes two searches the same search (a study resumes only with an equal record)."""
        base = OmegaConf.to_container(self.base.config, resolve=True)
        base.pop("run_dir", None)
        return {
            "sampler": self.sampler,
            "seed": self.seed,
            "objective": self.objective.describe(),
            "space": [parameter.describe() for parameter in self.space],
            "parameters": [parameter.name for parameter in self.space],
            "training": base,
        }

    def describe(self) -> dict[str, str]:
        """The search settings in words, for SUMMARY.md."""
        budget = f"{self.budget} trials" if self.budget is not None else "no trial limit"
        if self.max_minutes:
            budget += f", a worker starts no trial after {self.max_minutes:g} min"
        trainer = self.base.config.trainer
        return {
            "sampler": self.sampler + (f" (seed {self.seed}, {self.startup_trials} random start-up trials)"
                                       if self.sampler == "tpe" else f" (seed {self.seed})"),
            "objective": f"minimise {self.objective.describe()}",
            "pruner": self.pruner if self.pruner == "none" else
            f"median (after {self.pruner_startup_trials} trials and {self.pruner_warmup_epochs} epochs)",
            "per-trial budget": f"{trainer.max_epochs} epochs" + (f", at most {trainer.max_time}" if trainer.max_time else ""),
            "total budget": budget,
            "training overrides": " ".join(self.train_overrides) or "(none)",
            "study": f"{self.storage} (study '{self.name}')",
        }


def is_search_override(override: str) -> bool:
    """Whether an override sets the search (``hpo.n_trials=8``) rather than training."""
    return override.lstrip("~+").startswith("hpo.")


def prepare_search(
    search: str,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    config_dir: str | Path | None = None,
) -> Search:
    """Compose and check a search: the ``hpo/<search>.yaml`` config with ``hpo.*`` overrides,
    and the training config of its trials (its ``train`` list, then the other overrides).

    Raises:
        SearchError: a bad setting of the search, its space or its objective (one line).
    """
    search_overrides = [item for item in overrides if is_search_override(item)]
    training_overrides = [item for item in overrides if not is_search_override(item)]
    spec = OmegaConf.to_container(
        compose_training([f"+hpo={search}", *search_overrides], config_dir).config.hpo, resolve=True
    )
    sampler = str(spec["sampler"]["name"])
    if sampler not in SAMPLERS:
        raise SearchError(f"hpo.sampler.name: {sampler} is not one of {', '.join(SAMPLERS)}")
    pruner = str(spec["pruner"]["name"])
    if pruner not in PRUNERS:
        raise SearchError(f"hpo.pruner.name: {pruner} is not one of {', '.join(PRUNERS)}")
    n_trials, max_minutes = spec["n_trials"], spec["max_minutes"]
    if n_trials is not None and int(n_trials) < 1:
        raise SearchError(f"hpo.n_trials: must be 1 or more, not {n_trials}")
    if n_trials is None and max_minutes is None and sampler == "tpe":
        raise SearchError("hpo.n_trials: TPE needs a total budget: give n_trials or max_minutes")

    train_overrides = [*spec["train"], *training_overrides, "trainer.enable_progress_bar=false"]
    if spec["trial_epochs"] is not None:
        train_overrides.append(f"trainer.max_epochs={int(spec['trial_epochs'])}")
    if spec["trial_minutes"] is not None:
        seconds = round(float(spec["trial_minutes"]) * 60)
        train_overrides.append(f"trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
    base = compose_training(train_overrides, config_dir)
    missing = sorted(OmegaConf.missing_keys(base.config))
    if missing:
        raise SearchError(f"the training config leaves {', '.join(missing)} unset: give it, e.g. data.path=labels.h5")

    space = parse_space(spec.get("space") or {}, base.config, _groups(config_dir), sampler)
    objective = Objective.parse(spec["objective"])
    objective.check_data(base.config.data.path, base.config.data.source)

    out = Path(out) if out is not None else Path("runs") / "hpo" / search
    storage = spec["storage"] or f"sqlite:///{(out / 'study.db').resolve()}"
    return Search(
        name=spec["study_name"] or search,
        out=out.resolve(),
        storage=storage,
        sampler=sampler,
        seed=int(spec["sampler"]["seed"]),
        startup_trials=int(spec["sampler"]["startup_trials"]),
        n_trials=None if n_trials is None else int(n_trials),
        max_minutes=None if max_minutes is None else float(max_minutes),
        include_base=bool(spec["include_base"]),
        pruner=pruner,
        pruner_startup_trials=int(spec["pruner"]["startup_trials"]),
        pruner_warmup_epochs=int(spec["pruner"]["warmup_epochs"]),
        objective=objective,
        space=space,
        train_overrides=train_overrides,
        base=base,
        config_dir=None if config_dir is None else str(Path(config_dir).resolve()),
        base_values=base_values(space, base.config, base.choices),
        command=" ".join(["mlip-distill hpo", f"--search {search}", *([f"--config-dir {config_dir}"] if config_dir else []),
                          f"--out {out}", *overrides]),
    )
