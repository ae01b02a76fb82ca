#!/bin/bash
# The peers' virtual environment for benchmarks/peers_sevennet_si.py, made once (idempotent):
#   benchmarks/peers/.venv-mace   MACE 0.3.16, which pins e3nn 0.4.4 (the project has e3nn 0.6)
# sevenn runs from the project's own .venv: sevenn 0.13.0 is a project dependency there (the
# teacher that labelled the data), with the same torch build as the student.
#
# torch is installed first and pinned by version: left to resolve it from mace-torch's
# requirements, pip may fetch a multi-GB CUDA build; torch==2.13.0 is found as the CPU wheel on
# this machine's disk (pip's find-links), and then counts as satisfied for mace-torch.
#
#   bash benchmarks/peers/setup_venvs.sh [PYTHON]     (PYTHON defaults to python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-mace"
python="${1:-python3}"

if [ -x "$venv/bin/mace_run_train" ] && "$venv/bin/python" -c "import mace, e3nn" 2>/dev/null; then
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet mace-torch==0.3.16
"$venv/bin/python" - <<'EOF'
import e3nn, mace, torch
print(f"MACE venv: torch {torch.__version__}, e3nn {e3nn.__version__}, mace {mace.__version__}")
assert not torch.version.cuda, f"torch {torch.__version__} is a CUDA build: install the CPU wheel first"
EOF
