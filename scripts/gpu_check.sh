#!/usr/bin/env bash
# The one-call GPU check (docs/gpu.md): install the GPU bundle (`make gpu-bundle`) into a target
# folder, print the versions and nvidia-smi, run the GPU tier, then the engine, DP-SGD and P3EFT
# benchmarks on the device, each JSON and the log into $OUT. `make gpu-rehearsal` runs it with
# the CPU as the device and small sizes. Each step has its own time limit (345 s in all, so the
# call fits `timeout_s` 390 and a rerun at once fits the 15 minutes of device time), and a failed
# step does not stop the next; the exit status counts the failed steps.
#
#   OUT=DIR scripts/gpu_check.sh [cuda|cpu] [full|small]
#
# PYTHON: the interpreter (default python3, the image's); WHEELS: the bundle (default .whl);
# SITE: where it is installed (default /tmp/fedsim-site); OUT: default gpu-check-out.
set -u
DEVICE=${1:-cuda}
SIZES=${2:-full}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/fedsim-site}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [ "$SIZES" = small ]; then # a CPU: small workloads, each step's limit tripled
    CLIENTS=4,8 REPEATS=1 SCALE=3
else
    CLIENTS=100,1000 REPEATS=11 SCALE=1
fi
failed=0

step() { # step NAME LIMIT_S COMMAND...: run it under its time limit, say how it went
    local name=$1 limit=$(($2 * SCALE)) start=$SECONDS
    shift 2
    echo "=== $name (limit ${limit}s)"
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

echo "=== install the bundle into $SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || exit 1
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1
# -P: not the repo's own folders first on sys.path (its fedsim/ is not the installed package)
PY=("$PYTHON" -P)

echo "=== versions"
"${PY[@]}" -c 'import sys, torch, numpy, transformers, peft
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| numpy", numpy.__version__, "| transformers", transformers.__version__,
      "| peft", peft.__version__)
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
"${PY[@]}" scripts/gpu_bundle.py verify "$SITE"
if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not on this machine"; fi

step "GPU tier" 90 "${PY[@]}" -m pytest -q -rs -p no:cacheprovider --import-mode=importlib \
    -m gpu tests/test_gpu_tier.py --junitxml="$OUT/gpu_tier.xml"
step "engine overhead" 150 "${PY[@]}" benchmarks/engine_overhead.py --device "$DEVICE" \
    --clients "$CLIENTS" --out "$OUT/engine_overhead.json"
step "DP-SGD overhead" 60 "${PY[@]}" benchmarks/dp_overhead.py --device "$DEVICE" \
    --repeats "$REPEATS" --out "$OUT/dp_overhead.json"
step "P3EFT overhead" 45 "${PY[@]}" benchmarks/p3eft_overhead.py --device "$DEVICE" \
    --backbone tiny-bert --out "$OUT/p3eft_overhead.json"

echo "=== gpu check on $DEVICE: $failed step(s) failed; files in $OUT:" && ls "$OUT"
exit "$failed"
