#!/usr/bin/env bash
# GPU checks for a machine with one CUDA GPU, in under 10 minutes:
#   1. pytest -m gpu tests/gpu (CPU-vs-GPU agreement, a reduced profile on the GPU);
#   2. the timed profile of a random mamba-1.4b-shaped model (48 layers, hidden 2048, vocab 50,280):
#      wall time and peak GPU memory.
# Without CUDA it runs what it can (the GPU tests are collected and skipped; the timing helpers
# run on a tiny model as a smoke test), says what it skipped and exits 0.
#
# Run from the repository root:  bash tests/gpu/check.sh
# Environment: PYTHON (default .venv/bin/python if present, else python), WORK (scratch folder,
# default a temporary one), PROFILE_TIMEOUT (seconds for the timed profile, default 300; it is
# interrupted cleanly after that and reports the part that ran), PROFILE_ARGS (options of the
# timed profile; default: reduced settings), DTYPE (checkpoint dtype, default bfloat16).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
WORK=${WORK:-$(mktemp -d)}
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-300}
DTYPE=${DTYPE:-bfloat16}
# Reduced from the defaults (9 criteria x 9 sparsities + a 48-layer sweep would take far longer than the budget).
PROFILE_ARGS=${PROFILE_ARGS:-"--nsamples 8 --eval-samples 8 --seqlen 256 --batch-size 8 --criteria magnitude,wanda,fisher --sparsities 0.3,0.6 --no-per-layer"}
HERE=tests/gpu

cuda=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')
"$PYTHON" - <<'PY'
import importlib.util, torch, transformers
kernels = [m for m in ("mamba_ssm", "causal_conv1d") if importlib.util.find_spec(m)]
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"CUDA kernels installed: {', '.join(kernels) or 'none (transformers uses its slow torch path on the GPU)'}")
PY

echo "== 1. pytest -m gpu $HERE"
tests_rc=0
"$PYTHON" -m pytest -q -m gpu "$HERE" -rs || tests_rc=$?  # the timing below runs even when a test fails

if [ -z "$cuda" ]; then
    echo "== 2. no CUDA device: skipping the timed mamba-1.4b-shaped profile; smoke-testing its helpers on a tiny model (CPU)"
    "$PYTHON" "$HERE/make_random_model.py" "$WORK/tiny-random" --layers 2 --hidden 64 --vocab 4096 --dtype "$DTYPE"
    "$PYTHON" "$HERE/profile_timed.py" "$WORK/tiny-random" -o "$WORK/tiny-run" --tokenizer embedded --dtype "$DTYPE" \
        --nsamples 2 --eval-samples 2 --seqlen 16 --criteria magnitude --sparsities 0.5 --no-per-layer --quiet --force
    echo "GPU parts skipped (no CUDA device); CPU parts passed"
    exit "$tests_rc"
fi

echo "== 2. timed profile of a random mamba-1.4b-shaped model on $cuda"
"$PYTHON" "$HERE/make_random_model.py" "$WORK/mamba-1.4b-random" --dtype "$DTYPE"
# shellcheck disable=SC2086  # PROFILE_ARGS is a list of options
timeout -s INT -k 30 "$PROFILE_TIMEOUT" "$PYTHON" "$HERE/profile_timed.py" "$WORK/mamba-1.4b-random" \
    -o "$WORK/mamba-1.4b-run" --tokenizer embedded --device cuda --force --quiet $PROFILE_ARGS \
    || echo "(the profile stopped before finishing: see its figures above)"
"$PYTHON" - "$WORK/mamba-1.4b-run/run.json" <<'PY' || true
import json, sys
meta = json.load(open(sys.argv[1]))
print("run.json:", {k: meta.get(k) for k in ("device", "status", "timings")})
PY
exit "$tests_rc"
