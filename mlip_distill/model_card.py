"""MODEL_CARD.md of a potential package, written from what its ``potential.json`` records.

Every statement comes from the metadata (teacher provenance from the label file, the data it
was trained on, its errors, speeds, the training config); a fact that was not recorded is
written as unknown, never guessed. The command that reproduces the training is rebuilt from
the recorded config as Hydra overrides of the packaged defaults (:func:`reproduce_command`).

The ``speed`` record of ``potential.json`` is one of two kinds:

==================  ==========================================================================
MD steps            what ``mlip-distill distill`` measures: ``n_atoms``, ``threads``,
                    ``student_steps_per_s``, ``teacher_steps_per_s`` (steps/s), ``from``
calculator calls    what a benchmark measures (:func:`call_speed`): ``calls``, a list of
                    ``{n_atoms, student_ms, teacher_ms}`` (ms per ASE call; ``teacher_ms``
                    absent when no teacher was timed), ``computes`` (e.g. "energy and
                    forces"), ``threads``, ``machine``, ``teacher`` (its name, or absent),
                    ``student`` (how it ran, e.g. "eager"), ``from``
==================  ==========================================================================
"""

from __future__ import annotations

import os
import platform
import re
import shlex
from typing import Any, Mapping, Sequence

from ase.data import chemical_symbols

UNKNOWN = "unknown (not recorded)"
_ERROR_COLUMNS = (
    ("energy", "mev_per_atom", "meV/atom"),
    ("forces", "mev_per_A", "meV/Å"),
    ("stress", "mev_per_A3", "meV/Å³"),
)
# Config keys that say where a run went, not how it was trained.
_NOT_REPRODUCED = ("run_dir",)
_PLAIN_STRING = re.compile(r"^[A-Za-z_/.][\w/.-]*$")


def model_card(metadata: Mapping[str, Any], curves: Sequence[str] = ()) -> str:
    """The Markdown model card of a package with ``metadata`` (its parsed ``potential.json``);
    ``curves``: the learning-curve files that ship beside it (``curves.csv``, ``curves.png``)."""
    model = metadata.get("model", {})
    hyper = model.get("hyperparameters", {})
    elements = ", ".join(chemical_symbols[z] for z in metadata.get("elements", [])) or UNKNOWN
    lines = [
        f"# {model.get('name', 'student')} student potential for {elements}",
        "",
        f"- architecture: {model.get('name', UNKNOWN)}, {_count(metadata.get('n_parameters'))} parameters, "
        f"cutoff {metadata.get('cutoff', UNKNOWN)} Å, {metadata.get('dtype', UNKNOWN)}",
        f"- hyperparameters: {_inline(hyper) if hyper else UNKNOWN}",
        f"- weights: {_weights_line(metadata)}",
        f"- compiled model: {_compiled_line(metadata.get('compiled'))}",
        f"- made with mlip-distill {metadata.get('versions', {}).get('mlip_distill', UNKNOWN)} "
        f"(git {metadata.get('git_commit') or UNKNOWN}), package format {metadata.get('format_version')}",
        "",
        "## Teacher",
        "",
        *_teacher(metadata.get("teacher"), metadata.get("data")),
        "",
        "## Training data",
        "",
        *_data(metadata.get("data")),
        "",
        "## Stages",
        "",
        *_stages(metadata.get("training", {}).get("config")),
        "",
        "## Errors",
        "",
        *_errors(metadata.get("errors"), metadata.get("quantization")),
        "",
        "## Speed",
        "",
        *_speed(metadata.get("speed")),
        "",
        "## Reproduce",
        "",
        *_reproduce(metadata),
        "",
        "## Files",
        "",
        "`weights.safetensors` and `potential.json` (checksums of every file), "
        + ("`model.pt2`, " if metadata.get("compiled") else "")
        + (f"{' and '.join(f'`{name}`' for name in curves)} (learning curves), " if curves else "no learning curves, ")
        + "this card. Load with `StudentCalculator(\"<this folder>\")`; loading never unpickles.",
    ]
    return "\n".join(lines) + "\n"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else UNKNOWN


def _inline(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in mapping.items() if key not in ("elements", "e0"))


def _weights_line(metadata: Mapping[str, Any]) -> str:
    quantization = metadata.get("quantization")
    if not quantization:
        return f"{metadata.get('dtype', UNKNOWN)}"
    return (f"{len(quantization['weights'])} weight tensors stored as int8 ({quantization['scheme']}), "
            "dequantised to float when loaded; the rest float. The int8 student computes in float, so it "
            "is smaller on disk but no faster than the float32 one (`benchmarks/quantization.py`)")


def _compiled_line(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "none (eager only)"
    return f"`{entry['file']}` ({entry['format']}, {entry['dtype']}, torch {entry['torch']})"


def _teacher(teacher: Mapping[str, Any] | None, data: Mapping[str, Any] | None) -> list[str]:
    data = data or {}
    named = teacher and (teacher.get("name") or teacher.get("spec"))
    if not named and data.get("source") == "reference":  # learnt the ground truth itself
        return [f"Teacher: none; trained directly on the reference (ground-truth, e.g. DFT) labels of "
                f"`{data.get('path', UNKNOWN)}`, not on a teacher model's predictions."]
    if not teacher:
        return [f"Teacher: {UNKNOWN}."]
    lines = [
        f"- name: {teacher.get('name', UNKNOWN)}",
        f"- spec: `{teacher['spec']}`" if teacher.get("spec") else f"- spec: {UNKNOWN}",
        f"- version: {teacher.get('version') or UNKNOWN}",
    ]
    if teacher.get("weights_sha256"):
        lines.append(f"- weights SHA-256: `{teacher['weights_sha256']}`")
    if teacher.get("settings"):
        lines.append(f"- settings: {_inline(teacher['settings'])}")
    extras = {key: teacher[key] for key in ("features", "hvp_probes", "hvp_method") if teacher.get(key)}
    if extras:
        lines.append(f"- extra labels: {_inline(extras)}")
    return lines


def _data(data: Mapping[str, Any] | None) -> list[str]:
    if not data:
        return [f"Training data: {UNKNOWN}."]
    lines = [
        f"- label file: `{data.get('path', UNKNOWN)}`"
        + (f" (SHA-256 `{data['sha256']}`)" if data.get("sha256") else ""),
        f"- label source: {data.get('source', UNKNOWN)}",
        f"- structures: {data.get('n_train', UNKNOWN)} for training, {data.get('n_valid', UNKNOWN)} held out",
    ]
    label_file = data.get("label_file")
    if label_file:
        kinds = ", ".join(f"{count} {kind or 'unlabelled kind'}" for kind, count in label_file["config_types"].items())
        lines.append(f"- in the label file: {label_file['n_structures']} structures, {label_file['n_atoms']} atoms "
                     f"({kinds}); sources {', '.join(label_file['sources'])}")
    lines.append(f"- sampling settings: {_inline(data['sampling']) if data.get('sampling') else UNKNOWN}")
    return lines


def _stages(config: Mapping[str, Any] | None) -> list[str]:
    if config is None:
        return [f"Stages: {UNKNOWN}."]
    stages = config.get("stages")
    if not stages:
        return ["One stage: the training config has no `stages` list."]
    if isinstance(stages, Mapping):  # {name: settings}
        stages = [{"name": name, **(settings or {})} for name, settings in stages.items()]
    lines = []
    for number, stage in enumerate(stages, start=1):
        if isinstance(stage, Mapping):
            name = stage.get("name", f"stage {number}")
            details = {key: value for key, value in stage.items() if key != "name"}
            lines.append(f"{number}. **{name}**: {_inline(details) if details else 'defaults'}")
        else:
            lines.append(f"{number}. {stage}")
    return lines


def _errors(errors: Mapping[str, Any] | None, quantization: Mapping | None) -> list[str]:
    if not errors:
        return [f"Errors: {UNKNOWN}."]
    lines = [
        "| data | E MAE / RMSE (meV/atom) | F MAE / RMSE (meV/Å) | S MAE / RMSE (meV/Å³) | structures |",
        "|---|---|---|---|---|",
    ]
    for name, metrics in errors.items():
        cells = []
        for quantity, key, _ in _ERROR_COLUMNS:
            mae, rmse = metrics.get(f"{quantity}_mae_{key}"), metrics.get(f"{quantity}_rmse_{key}")
            cells.append("not measured" if mae is None else f"{mae:.3g} / {rmse:.3g}")
        lines.append(f"| {name} | {' | '.join(cells)} | {metrics.get('n_structures', UNKNOWN)} |")
    has_reference = any("reference" in name for name in errors)
    lines += ["", f"Errors against reference (ground-truth) labels: {'above' if has_reference else UNKNOWN}."]
    if quantization:
        lines.append("These errors were measured before the weights were stored as int8 (see the weights line).")
    return lines


def _speed(speed: Mapping[str, Any] | None) -> list[str]:
    if not speed:
        return [f"Speed against the teacher: {UNKNOWN}."]
    if "calls" in speed:
        return _call_speed(speed)
    student, teacher = speed.get("student_steps_per_s"), speed.get("teacher_steps_per_s")
    line = (f"MD of {speed.get('n_atoms', UNKNOWN)} atoms on {speed.get('threads', UNKNOWN)} CPU threads: "
            f"student {student:.1f} steps/s")
    if teacher:
        line += f", teacher {teacher:.1f} steps/s ({student / teacher:.1f}x) on the same machine"
    return [line + (f" (from `{speed['from']}`)." if speed.get("from") else ".")]


def _call_speed(speed: Mapping[str, Any]) -> list[str]:
    teacher, threads = speed.get("teacher"), speed.get("threads", UNKNOWN)
    lines = [
        f"ASE calculator calls computing {speed.get('computes', UNKNOWN)}, on {threads} CPU "
        f"thread{'' if threads == 1 else 's'} of {speed.get('machine') or UNKNOWN}; "
        f"student {speed.get('student') or UNKNOWN}"
        + (f"; from `{speed['from']}`" if speed.get("from") else "") + ":",
        "",
        f"| atoms | student (ms per call) | {teacher} (ms per call) | student speed-up |" if teacher
        else "| atoms | student (ms per call) | calls per second |",
        "|---|---|---|---|" if teacher else "|---|---|---|",
    ]
    for call in speed["calls"]:
        student_ms, teacher_ms = call["student_ms"], call.get("teacher_ms")
        if teacher:
            timed = f"{_ms(teacher_ms)} | {teacher_ms / student_ms:.0f}×" if teacher_ms else "not timed | –"
            lines.append(f"| {call['n_atoms']} | {_ms(student_ms)} | {timed} |")
        else:
            lines.append(f"| {call['n_atoms']} | {_ms(student_ms)} | {1e3 / student_ms:.0f} |")
    if not teacher:
        lines += ["", "No teacher was timed beside it."]
    return lines


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def call_speed(
    calls: Sequence[Mapping[str, Any]], computes: str, threads: int, student: str,
    teacher: str | None = None, source: str | None = None, machine: str | None = None,
) -> dict[str, Any]:
    """A speed record of ASE calculator calls for ``potential.json`` (see the module docstring).

    Args:
        calls: per structure size, ``{"n_atoms": int, "student_ms": float, "teacher_ms": float}``
            (milliseconds per call; leave ``teacher_ms`` out when no teacher was timed).
        computes: what each call computes, e.g. "energy, forces and stress".
        threads: CPU threads the models ran on.
        student: how the student ran, e.g. "eager, neighbour list rebuilt every call".
        teacher: the timed teacher's name; None when none was timed.
        source: where the measurement is reported, e.g. ``benchmarks/results/shipped_si.md``.
        machine: the CPU; default this machine's (:func:`this_machine`).
    """
    record: dict[str, Any] = {
        "calls": [{key: value for key, value in call.items() if value is not None} for call in calls],
        "computes": computes, "threads": threads, "machine": machine or this_machine(), "student": student,
    }
    if teacher:
        record["teacher"] = teacher
    if source:
        record["from"] = source
    return record


def this_machine() -> str:
    """This machine's CPU model and core count, e.g. "AMD EPYC, 2 cores"."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _reproduce(metadata: Mapping[str, Any]) -> list[str]:
    config = metadata.get("training", {}).get("config")
    if config is None:
        return [f"Training command: {UNKNOWN}."]
    lines = ["```bash", reproduce_command(config)]
    teacher, data = metadata.get("teacher") or {}, metadata.get("data") or {}
    if teacher.get("spec") and data.get("path"):
        lines.insert(1, f"# the labels came from: mlip-distill label <structures> --teacher {teacher['spec']} "
                        f"--out {data['path']}")
    if data.get("path"):
        lines.insert(1, f"# run where the label file {data['path']} is (SHA-256 above); paths are relative to there")
    return [*lines, "```"]


def reproduce_command(config: Mapping[str, Any]) -> str:
    """``mlip-distill train`` with the Hydra overrides that compose ``config`` (a resolved
    training config) from the packaged defaults; ``run_dir`` is left out (a new run gets its
    own folder)."""
    return " ".join(["mlip-distill train", *(shlex.quote(override) for override in config_overrides(config))])


def config_overrides(config: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that compose ``config`` from the packaged defaults: the experiment and
    config-group options that leave the fewest differences, then one override per differing
    key (``key=value``, ``+key=value`` for a key the defaults lack, ``~key`` for one they have
    and ``config`` does not)."""
    from .configs import config_groups

    config = {key: value for key, value in config.items() if key not in _NOT_REPRODUCED}
    groups = config_groups()
    chosen: list[str] = []
    experiment = config.get("experiment_name")
    if experiment in groups.get("experiment", []):
        chosen.append(f"experiment={experiment}")
    for group in ("model", "loss", "optimizer", "scheduler", "data", "trainer"):
        if group in config and len(groups.get(group, [])) > 1:
            candidates = [[], *([f"{group}={option}"] for option in groups[group])]  # [] keeps the default
            chosen += min(
                candidates,
                key=lambda override: len(_differences(_composed([*chosen, *override]).get(group), config[group], group)),
            )
    differences = _differences(_composed(chosen), config, "")
    return [*chosen, *differences]


def _composed(overrides: Sequence[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from .training.run import compose_config

    composed = OmegaConf.to_container(compose_config(overrides), resolve=True)
    return {key: value for key, value in composed.items() if key not in _NOT_REPRODUCED}


def _differences(base: Any, target: Any, prefix: str) -> list[str]:
    if isinstance(base, Mapping) and isinstance(target, Mapping):
        found = []
        for key in [*target, *(key for key in base if key not in target)]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in base:
                found.append(f"+{path}={_hydra_value(target[key])}")
            elif key not in target:
                found.append(f"~{path}")
            else:
                found += _differences(base[key], target[key], path)
        return found
    return [] if base == target and type(base) is type(target) else [f"{prefix}={_hydra_value(target)}"]


def _hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{_hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    text = str(value)
    if _PLAIN_STRING.match(text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
