#!/usr/bin/env bash
# The one test command: sets up .venv (project + extras, the live reference, torch pinned), then runs pytest.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LTX_MLX_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ "$(uname -s)" = "Linux" ]; then EXTRAS="cpu,test"; else EXTRAS="test"; fi

# MLX's Linux CPU wheel runs float32 matmul on a slow reference BLAS; a preloaded OpenBLAS is ~40x faster.
BLAS=""
if [ "$(uname -s)" = "Linux" ]; then
    BLAS="$(ls /usr/lib/*-linux-gnu/libopenblas.so.0 /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 2>/dev/null | head -n 1 || true)"
    if [ -z "$BLAS" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        (apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1; }) || true
        BLAS="$(ls /usr/lib/*-linux-gnu/libopenblas.so.0 /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 2>/dev/null | head -n 1 || true)"
    fi
    [ -n "$BLAS" ] || echo "note: libopenblas not found; float32 matmuls will be slow (apt-get install libopenblas0-pthread)"
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
STAMP="$VENV/.ltx-mlx-installed"
WANT="$(cat pyproject.toml tests/run.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
    # The live reference. --no-deps: its declared torch/torchaudio requirements would pull CUDA builds.
    "$VENV/bin/python" -m pip install -q --no-deps ltx-core==1.0.0 ltx-pipelines==1.0.0
    echo "$WANT" > "$STAMP"
fi

export PYTHONUNBUFFERED=1
# torch's OpenMP threads otherwise spin-wait and starve MLX on a 2-core machine
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ -n "$BLAS" ]; then export LD_PRELOAD="$BLAS${LD_PRELOAD:+:$LD_PRELOAD}"; fi
exec "$VENV/bin/python" -m pytest "$@"
