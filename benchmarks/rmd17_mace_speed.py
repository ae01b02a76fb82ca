"""How much faster than a MACE of the MACE paper's rMD17 size is an rMD17 student, as ASE
calculators on the same CPU threads?

MACE's side runs in its own venv (``peers/mace_speed.py``: random weights, 256 channels,
spherical harmonics to l = 3, correlation order 3, two interactions, 5 Å; hidden irreps to L = 2
in float64, as the paper trained it, and float32, and L = 0 in float32 as a lower bound). The student's side is ``rmd17.calculator_speed``
on the same test frame, timed before and after MACE. Both count energy-and-forces calls per
second on displaced copies of the first test frame.

    OMP_NUM_THREADS=1 python benchmarks/rmd17_mace_speed.py POTENTIAL --molecule ethanol
    # writes benchmarks/results/rmd17_mace_speed.{json,md} and regenerates benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from mlip_distill.package import read_metadata
from reference_training import BENCHMARKS, RESULTS, default_data_dir, regenerate_readme
from rmd17 import PUBLISHED, calculator_speed

MACE_PYTHON = BENCHMARKS / "peers" / ".venv-mace" / "bin" / "python"


def mace_speed(test_path: Path, python: Path) -> dict:
    """``peers/mace_speed.py`` run by ``python`` (the MACE venv) with this process's threads."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mace.json"
        subprocess.run([str(python), str(BENCHMARKS / "peers" / "mace_speed.py"), str(test_path), "--out", str(out)],
                       check=True, env=environment)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("potential", type=Path, help="the student's potential package")
    parser.add_argument("--molecule", default="ethanol", choices=sorted(PUBLISHED))
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder with rmd17/")
    parser.add_argument("--mace-python", type=Path, default=MACE_PYTHON, help="Python of the MACE venv")
    args = parser.parse_args()
    test_path = args.data / "rmd17" / f"{args.molecule}_test.xyz"

    before = calculator_speed(args.potential, test_path)
    mace = mace_speed(test_path, args.mace_python)
    after = calculator_speed(args.potential, test_path)
    student = (before["calls_per_s"] + after["calls_per_s"]) / 2
    results = {"molecule": args.molecule, "threads": torch.get_num_threads(), "potential": str(args.potential),
               "student": {"calls_per_s_before": before["calls_per_s"], "calls_per_s_after": after["calls_per_s"],
                           "calls_per_s": student, "compiled": before["compiled"], "n_atoms": before["n_atoms"],
                           "n_parameters": read_metadata(args.potential)["n_parameters"]},
               "mace": mace}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rmd17_mace_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "rmd17_mace_speed.md").write_text(table(results))
    regenerate_readme()
    print(table(results))


def table(results: dict) -> str:
    student, mace = results["student"], results["mace"]
    lines = [
        "| model | parameters | E+F calls/s | ms per call | student speed-up |",
        "|---|---|---|---|---|",
        f"| this student (`{'/'.join(Path(results['potential']).parts[-4:-1])}`), float32, "
        f"{'compiled' if student['compiled'] else 'eager'} | {student['n_parameters']:,} | {student['calls_per_s']:.0f} "
        f"| {1000 / student['calls_per_s']:.1f} | |",
    ]
    for model in mace["models"]:
        calls = model["calls_per_s"]
        lines.append(f"| MACE, 256 channels, {model['name']} (random weights) | {model['n_parameters']:,} | {calls:.2f} "
                     f"| {1000 / calls:.0f} | {student['calls_per_s'] / calls:,.0f}× |")
    lines.append(
        f"\n{results['molecule'].capitalize()} ({student['n_atoms']} atoms), the first rMD17 test frame, energy and "
        f"forces through each model's ASE calculator on {results['threads']} CPU thread(s) of a machine shared with "
        f"other jobs; median of 3 rounds (student 50 calls a round, MACE {mace['calls_per_round']}) on displaced "
        f"copies after a warm-up round. The student was timed before and after MACE "
        f"({student['calls_per_s_before']:.0f} and {student['calls_per_s_after']:.0f} calls/s; the table gives their "
        f"mean). MACE (mace-torch 0.3.16, e3nn 0.4.4): {mace['num_interactions']} interactions, spherical harmonics "
        f"to l = {mace['max_ell']}, correlation order {mace['correlation']}, {mace['r_max']:g} Å, hidden irreps "
        "256x0e + 256x1o + 256x2e (L = 2, our reading of the paper's rMD17 model, trained in float64) or 256x0e "
        "(L = 0, the cheapest MACE of that width, a lower bound on its cost).\n"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
