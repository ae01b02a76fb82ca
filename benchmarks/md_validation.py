"""`mlip-distill md` for a student against its teacher, with the report kept in
``benchmarks/results/md_<name>/`` and a row per temperature in ``benchmarks/README.md``.

A named case reruns a committed report with one command (paths from the repository root):

    python benchmarks/md_validation.py --case si_sevennet_mlearn   # 64-atom Si, SevenNet-0; 21 min, 1 thread
    python benchmarks/md_validation.py --case ethanol_rmd17        # ethanol, GFN2-xTB; needs the xtb extra

Any other student:

    python benchmarks/md_validation.py --name cu_emt_nequip \
        --potential runs/benchmarks/cu_emt/<date>/nequip/potential --teacher emt \
        --structures bulk:Cu:fcc:a=3.61:cubic:3x3x3 -- --temperatures 300 1000 --seeds 3 --ps 2 --threads 2

Everything after ``--`` goes to ``mlip-distill md`` unchanged (after a case's own options, so it
overrides them: ``--case si_sevennet_mlearn -- --ps 0.02 --nve-ps 0.01`` is a quick trial run).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from PIL import Image

from mlip_distill.cli import main as mlip_distill

from reference_training import BENCHMARKS, RESULTS, regenerate_readme

REPOSITORY = BENCHMARKS.parent


@dataclass(frozen=True)
class Case:
    """One committed MD check: the student (a folder under the repository), the teacher's spec,
    the starting structure (a file under the repository, or a ``bulk:`` spec) and the options of
    ``mlip-distill md``."""

    potential: str
    teacher: str
    structures: str
    options: tuple[str, ...]


CASES = {
    # 64 atoms, not 216: SevenNet-0 runs about 1.7 steps/s on one thread at 64 atoms, and its NVT and
    # NVE runs at both temperatures are most of the 21 minutes (1,255 s on 2 shared cores, 2026-11-27).
    "si_sevennet_mlearn": Case(
        potential="potentials/si-sevennet-mlearn",
        teacher="sevennet:7net-0",
        structures="bulk:Si:diamond:a=5.43:cubic:2x2x2",
        options=("--temperatures", "300", "1000", "--seeds", "2", "--ps", "1.5", "--nve-ps", "0.5", "--threads", "1"),
    ),
    # a 9-atom molecule: its temperature fluctuates by tens of per cent, hence the wider band
    "ethanol_rmd17": Case(
        potential="potentials/ethanol-rmd17",
        teacher="xtb:GFN2",
        structures="benchmarks/results/md_ethanol_rmd17/ethanol_test_frame0.xyz",
        options=("--temperatures", "300", "--seeds", "2", "--ps", "1", "--nve-ps", "0.5", "--threads", "1",
                 "--temperature-band", "1.0"),
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), help="a committed MD check; sets every option below")
    parser.add_argument("--name", help="results go to benchmarks/results/md_<name>/ (default: the case's name)")
    parser.add_argument("--potential", help="the student's potential package folder")
    parser.add_argument("--teacher", help="teacher spec, e.g. emt or sevennet:7net-0")
    parser.add_argument("--structures", help="starting structure (file or bulk: spec)")
    parser.add_argument("md_options", nargs=argparse.REMAINDER, help="options of mlip-distill md, after --")
    args = parser.parse_args()
    options = args.md_options[1:] if args.md_options[:1] == ["--"] else args.md_options
    if args.case:
        case = CASES[args.case]
        structures = case.structures if case.structures.startswith("bulk:") else str(REPOSITORY / case.structures)
        name, potential, teacher = args.name or args.case, str(REPOSITORY / case.potential), case.teacher
        options = [*case.options, *options]
    else:
        missing = [f"--{key}" for key in ("name", "potential", "teacher", "structures") if getattr(args, key) is None]
        if missing:
            parser.error(f"without --case, give {', '.join(missing)}")
        name, potential, teacher, structures = args.name, args.potential, args.teacher, args.structures
    out = RESULTS / f"md_{name}"
    status = mlip_distill(["md", potential, "--teacher", teacher, "--structures", structures, "--out", str(out), *options])
    if status == 0:
        for plot in out.glob("*.png"):  # a 64-colour palette: a third of the size, the same plot to the eye
            Image.open(plot).convert("RGB").quantize(64).save(plot, optimize=True)
        print(f"regenerated {regenerate_readme()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
