#!/usr/bin/env bash
# One entry point for people and CI. Each command sets itself up (a virtualenv in .venv).
#   ./dev.sh run [args]     the main job: KGE training on a generated graph, mpiexec -n 2
#   ./dev.sh test [args]    the whole test suite (pytest; multi-rank tests launch mpiexec themselves)
#   ./dev.sh bench [args]   the PS micro-benchmark (train/bench/ps.py)
#   ./dev.sh setup          only create/refresh .venv
set -euo pipefail
cd "$(dirname "$0")"

pick_python() {
    for py in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
        [ -n "$py" ] || continue
        if command -v "$py" >/dev/null 2>&1 &&
           "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return
        fi
    done
    echo "dev.sh: need Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1
}

setup() {
    # Re-install only when pyproject.toml changed since the last successful install.
    if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
        echo "dev.sh: installing into .venv (first run takes about a minute; log: .venv/setup.log)"
        local py; py="$(pick_python)"
        "$py" -m venv .venv
        if ! { .venv/bin/python -m pip install -q --upgrade pip &&
               .venv/bin/python -m pip install -q -e '.[dev]'; } > .venv/setup.log 2>&1; then
            tail -n 40 .venv/setup.log >&2
            echo "dev.sh: installation failed (full log: .venv/setup.log)" >&2
            exit 1
        fi
        touch .venv/.installed
    fi
}

# Several ranks share few cores: one XLA/BLAS thread per process avoids oversubscription.
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export PATH="$PWD/.venv/bin:$PATH"

cmd="${1:-}"; shift || true
case "$cmd" in
    setup) setup ;;
    run)   setup; exec mpiexec -n "${RANKS:-2}" python -m train.kge "$@" ;;
    test)  setup; exec python -m pytest "$@" ;;
    bench) setup; exec python -m train.bench.ps "$@" ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
esac
