"""`mlip-distill md` for a student against its teacher, with the report kept in
``benchmarks/results/md_<name>/`` and a row per temperature in ``benchmarks/README.md``.

    python benchmarks/md_validation.py --name cu_emt_nequip \
        --potential runs/benchmarks/cu_emt/<date>/nequip/potential --teacher emt \
        --structures bulk:Cu:fcc:a=3.61:cubic:3x3x3 -- --temperatures 300 1000 --seeds 3 --ps 2 --threads 2

Everything after ``--`` goes to ``mlip-distill md`` unchanged.
"""

from __future__ import annotations

import argparse
import sys

from mlip_distill.cli import main as mlip_distill

from reference_training import RESULTS, regenerate_readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/md_<name>/")
    parser.add_argument("--potential", required=True, help="the student's potential package folder")
    parser.add_argument("--teacher", required=True, help="teacher spec, e.g. emt or sevennet:7net-0")
    parser.add_argument("--structures", required=True, help="starting structure (file or bulk: spec)")
    parser.add_argument("md_options", nargs=argparse.REMAINDER, help="options of mlip-distill md, after --")
    args = parser.parse_args()
    options = args.md_options[1:] if args.md_options[:1] == ["--"] else args.md_options
    status = mlip_distill([
        "md", args.potential, "--teacher", args.teacher, "--structures", args.structures,
        "--out", str(RESULTS / f"md_{args.name}"), *options,
    ])
    if status == 0:
        print(f"regenerated {regenerate_readme()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
