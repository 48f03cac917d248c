#!/usr/bin/env bash
# One entry point for people and CI. Each command sets itself up (a virtualenv in .venv).
#   ./dev.sh run [args]     the main job: KGE training on a generated graph, mpiexec -n 2
#   ./dev.sh test [args]    the whole test suite (pytest; multi-rank tests launch mpiexec themselves)
#   ./dev.sh bench [args]   the PS micro-benchmark (train/bench/ps.py)
#   ./dev.sh setup          only create/refresh .venv
#   ./dev.sh env            print the environment the other commands run with
# Where nvidia-smi finds a GPU, the jitted steps run on it (the PS stays on the host): the
# venv gets the cuda extra and JAX_PLATFORMS is left to JAX; elsewhere it is cpu.
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

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }
if has_gpu; then gpu=1; else gpu=0; fi
export JAXPS_EXTRAS="${JAXPS_EXTRAS:-$([ $gpu = 1 ] && echo dev,cuda || echo dev)}"

setup() {
    # Re-install only when pyproject.toml or the extras changed since the last install.
    if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ] ||
       [ "$(cat .venv/.installed 2>/dev/null)" != "$JAXPS_EXTRAS" ]; then
        echo "dev.sh: installing into .venv (first run takes about a minute; log: .venv/setup.log)"
        local py; py="$(pick_python)"
        "$py" -m venv .venv
        if ! { .venv/bin/python -m pip install -q --upgrade pip &&
               .venv/bin/python -m pip install -q -e ".[$JAXPS_EXTRAS]"; } > .venv/setup.log 2>&1; then
            tail -n 40 .venv/setup.log >&2
            echo "dev.sh: installation failed (full log: .venv/setup.log)" >&2
            exit 1
        fi
        echo "$JAXPS_EXTRAS" > .venv/.installed
    fi
}

# Several ranks share few cores: one XLA/BLAS thread per process avoids oversubscription.
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1}"
if [ $gpu = 1 ]; then
    # Several ranks share a GPU: each allocates what it needs, not 75% of the memory.
    export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
else
    export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
export PATH="$PWD/.venv/bin:$PATH"

cmd="${1:-}"; shift || true
case "$cmd" in
    setup) setup ;;
    env)   for v in JAX_PLATFORMS XLA_FLAGS XLA_PYTHON_CLIENT_PREALLOCATE JAXPS_EXTRAS \
                    OMP_NUM_THREADS; do echo "$v=${!v-}"; done ;;
    run)   setup; exec mpiexec -n "${RANKS:-2}" python -m train.kge "$@" ;;
    test)  setup; exec python -m pytest "$@" ;;
    bench) setup; exec python -m train.bench.ps "$@" ;;
    *) sed -n '2,7p' "$0"; exit 2 ;;
esac
