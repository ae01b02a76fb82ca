"""Build a teacher from the one-line spec a user types.

Grammar
-------
``emt``
    ASE's effective-medium theory: Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O. Fast and crude;
    for tests, demos and trying the pipeline.
``potential:PATH``
    A potential package trained by mlip-distill (a folder, see :mod:`mlip_distill.package`),
    e.g. a large student teaching a smaller one; it also gives node features and exact
    Hessian-vector products (:class:`~mlip_distill.teachers.potential.PotentialTeacher`).
    Checked before the class form, so a module named ``potential`` cannot be used there.
``sevennet:MODEL``
    A pretrained SevenNet model by the name ``sevenn`` gives it, e.g. ``sevennet:7net-0``
    (SevenNet-0, 89 elements), with node features and exact Hessian-vector products
    (:class:`~mlip_distill.teachers.sevennet.SevenNetTeacher`; needs the ``sevennet`` extra).
``chgnet:MODEL``
    A CHGNet model shipped in the ``chgnet`` wheel, ``chgnet:0.3.0`` (H to Pu) or
    ``chgnet:r2scan``, with per-atom energies and atom features; molecules are boxed
    (:class:`~mlip_distill.teachers.chgnet.CHGNetTeacher`; needs the ``chgnet`` extra).
``xtb:GFN2`` or ``xtb:GFN1``
    GFN2-xTB or GFN1-xTB tight binding by tblite, H to Rn, with per-atom energies
    (:class:`~mlip_distill.teachers.xtb.XTBTeacher`; needs the ``xtb`` extra).
``pyscf:FUNCTIONAL/BASIS``
    Kohn-Sham DFT of molecules by PySCF, e.g. ``pyscf:pbe/def2-svp``, ``pyscf:b3lyp/6-31g*``;
    periodic structures are refused (:class:`~mlip_distill.teachers.dft.PySCFTeacher`; needs
    the ``dft`` extra).
``package.module:Class`` or ``package.module:Class(key=value, ...)``
    Any importable class: an ASE calculator (wrapped in
    :class:`~mlip_distill.teachers.ase_calculator.ASECalculatorTeacher`) or a
    :class:`~mlip_distill.teachers.base.Teacher`. Keyword values are Python literals
    (numbers, strings, lists, dicts, ``True``/``False``/``None``), e.g.
    ``ase.calculators.lj:LennardJones(sigma=2.3, epsilon=0.4)``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
from typing import Any

import ase
from ase.calculators.calculator import BaseCalculator
from ase.calculators.emt import EMT
from ase.calculators.emt import parameters as emt_parameters
from ase.data import atomic_numbers

from mlip_distill.teachers.ase_calculator import ASECalculatorTeacher
from mlip_distill.teachers.base import Teacher, TeacherError
from mlip_distill.teachers.potential import PotentialTeacher

POTENTIAL_PREFIX = "potential:"
SEVENNET_PREFIX = "sevennet:"
CHGNET_PREFIX = "chgnet:"
XTB_PREFIX = "xtb:"
PYSCF_PREFIX = "pyscf:"

_CLASS_SPEC = re.compile(
    r"(?P<module>[A-Za-z_][\w.]*):(?P<cls>[A-Za-z_]\w*)(?:\((?P<kwargs>.*)\))?", re.DOTALL
)


def load_teacher(spec: str) -> Teacher:
    """The teacher named by ``spec`` (grammar in the module docstring); raises
    :class:`TeacherError` with a one-line message for a spec it cannot build."""
    spec = spec.strip()
    if spec.lower() == "emt":
        return ASECalculatorTeacher(
            EMT(),
            name="emt",
            spec="emt",
            elements=[atomic_numbers[symbol] for symbol in emt_parameters],
            version=f"ase {ase.__version__}",
        )
    if spec.startswith(POTENTIAL_PREFIX):
        path = spec.removeprefix(POTENTIAL_PREFIX).strip()
        if not path:
            raise TeacherError(
                f"teacher spec '{spec}': expected potential:PATH to a package folder"
            )
        return PotentialTeacher(path)
    if spec.startswith(SEVENNET_PREFIX):
        return _sevennet_teacher(spec)
    if spec.startswith(CHGNET_PREFIX):
        return _chgnet_teacher(spec)
    if spec.startswith(XTB_PREFIX):
        return _xtb_teacher(spec)
    if spec.startswith(PYSCF_PREFIX):
        return _pyscf_teacher(spec)
    match = _CLASS_SPEC.fullmatch(spec)
    if match is None:
        raise TeacherError(
            f"unknown teacher spec '{spec}': expected 'emt' or 'package.module:Class(kwargs)'"
        )
    module_name, class_name = match["module"], match["cls"]
    kwargs = _parse_kwargs(match["kwargs"] or "", spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TeacherError(
            f"teacher spec '{spec}': cannot import '{module_name}' ({exc}); is it installed?"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise TeacherError(f"teacher spec '{spec}': module '{module_name}' has no '{class_name}'")
    _refuse_unknown_options(cls, kwargs, spec)
    try:
        instance = cls(**kwargs)
    except Exception as exc:  # any constructor error, reported as the user's spec problem
        raise TeacherError(f"teacher spec '{spec}': {class_name}(...) failed: {exc}") from exc
    if isinstance(instance, Teacher):
        return instance
    if isinstance(instance, BaseCalculator):
        return ASECalculatorTeacher(
            instance,
            name=class_name,
            spec=spec,
            version=_package_version(module_name),
            settings={**getattr(instance, "parameters", {}), **kwargs},
        )
    raise TeacherError(
        f"teacher spec '{spec}': {class_name} is neither an ASE calculator nor a Teacher"
    )


def _sevennet_teacher(spec: str) -> Teacher:
    """The teacher of ``sevennet:MODEL``; ``sevenn`` is imported only when one is asked for."""
    model = spec.removeprefix(SEVENNET_PREFIX).strip()
    if not model:
        raise TeacherError(f"teacher spec '{spec}': expected sevennet:MODEL, e.g. sevennet:7net-0")
    try:
        from mlip_distill.teachers.sevennet import SevenNetTeacher
    except ImportError as exc:
        raise TeacherError(
            f"teacher spec '{spec}': cannot import sevenn ({exc}); "
            "install it with pip install 'mlip-distill[sevennet]'"
        ) from exc
    return SevenNetTeacher(model)


def _chgnet_teacher(spec: str) -> Teacher:
    """The teacher of ``chgnet:MODEL``; ``chgnet`` is imported only when one is asked for."""
    model = spec.removeprefix(CHGNET_PREFIX).strip()
    if not model:
        raise TeacherError(f"teacher spec '{spec}': expected chgnet:MODEL, e.g. chgnet:0.3.0")
    try:
        from mlip_distill.teachers.chgnet import CHGNetTeacher
    except ImportError as exc:
        raise TeacherError(
            f"teacher spec '{spec}': cannot import chgnet ({exc}); "
            "install it with pip install 'mlip-distill[chgnet]'"
        ) from exc
    return CHGNetTeacher(model)


def _xtb_teacher(spec: str) -> Teacher:
    """The teacher of ``xtb:METHOD``; ``tblite`` is imported only when one is asked for."""
    try:
        from mlip_distill.teachers.xtb import XTBTeacher
    except ImportError as exc:
        raise TeacherError(
            f"teacher spec '{spec}': cannot import tblite ({exc}); "
            "install it with pip install 'mlip-distill[xtb]'"
        ) from exc
    return XTBTeacher(spec.removeprefix(XTB_PREFIX).strip())


def _pyscf_teacher(spec: str) -> Teacher:
    """The teacher of ``pyscf:FUNCTIONAL/BASIS``; ``pyscf`` is imported only when one is
    asked for."""
    xc, _, basis = spec.removeprefix(PYSCF_PREFIX).partition("/")
    if not xc.strip() or not basis.strip():
        raise TeacherError(
            f"teacher spec '{spec}': expected pyscf:FUNCTIONAL/BASIS, e.g. pyscf:pbe/def2-svp"
        )
    try:
        from mlip_distill.teachers.dft import PySCFTeacher
    except ImportError as exc:
        raise TeacherError(
            f"teacher spec '{spec}': cannot import pyscf ({exc}); "
            "install it with pip install 'mlip-distill[dft]'"
        ) from exc
    return PySCFTeacher(xc=xc.strip(), basis=basis.strip())


def _parse_kwargs(text: str, spec: str) -> dict[str, Any]:
    """``"sigma=2.3, epsilon=0.4"`` → ``{"sigma": 2.3, "epsilon": 0.4}``, literals only."""
    if not text.strip():
        return {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
            raise ValueError("only key=value arguments are allowed")
        return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    except (SyntaxError, ValueError) as exc:
        raise TeacherError(
            f"teacher spec '{spec}': cannot read arguments '{text}': {exc}; "
            "write key=value pairs with Python literal values"
        ) from exc


def _refuse_unknown_options(cls: type, kwargs: dict[str, Any], spec: str) -> None:
    """ASE calculators swallow any keyword into their ``parameters``, so a misspelt option
    (``sigam=2.3``) would silently fall back to its default and mislabel a whole data set.
    Refuse keywords that neither an ``__init__`` in the class hierarchy nor the class's
    ``default_parameters`` name. Classes without ``default_parameters`` cannot be checked."""
    options = set(getattr(cls, "default_parameters", None) or {})
    if not (isinstance(cls, type) and issubclass(cls, BaseCalculator) and options):
        return
    named_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
            options.update(p.name for p in parameters if p.kind in named_kinds)
    unknown = sorted(set(kwargs) - options - {"self"})
    if unknown:
        raise TeacherError(
            f"teacher spec '{spec}': {cls.__name__} has no option {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(options - {'self'}))}"
        )


def _package_version(module_name: str) -> str:
    """``"ase 3.29.0"`` for ``"ase.calculators.lj"``; ``"<package> unknown"`` when not found."""
    package = module_name.split(".")[0]
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        version = getattr(importlib.import_module(package), "__version__", "unknown")
        return f"{package} {version}"
