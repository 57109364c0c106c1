#!/usr/bin/env bash
# The prepared GPU run: install this checkout over the machine's own torch/timm/torchvision,
# run the `cuda` tests, then the GPU tables. Writes log.txt, tests.txt and table-*.md to OUT_DIR.
#
#   benchmarks/device_check.sh OUT_DIR              # on a CUDA machine: under 8 minutes on one H200
#   DEVICE=cpu benchmarks/device_check.sh OUT_DIR   # the same steps at tiny sizes on a CPU (checks the script)
#
# Nothing is upgraded: the project goes in with --no-deps; pluggy, PyYAML, safetensors and tqdm
# must be there already (they are on the H200 image) or in WHEELS=DIR (pip --no-index --find-links).
# Each phase has its own time limit, cut to what is left of BUDGET_S (default 450 s), so one slow
# phase cannot take the rest of the budget with it and the whole run ends inside 8 minutes.
set -uo pipefail

out=${1:?usage: benchmarks/device_check.sh OUT_DIR}
device=${DEVICE:-cuda}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec > >(tee -a "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1
start=$SECONDS
status=0
budget=${BUDGET_S:-450}
phase() { echo; echo "=== [$((SECONDS - start)) s] $*"; }
limit() {  # limit WANTED_S: the wanted limit, or what is left of the budget if less (at least 1 s)
    local left=$((budget - (SECONDS - start)))
    ((left < 1)) && left=1
    echo $(($1 < left ? $1 : left))
}
python=${PYTHON:-python3}
cd "$repo"

phase "environment ($device)"
"$python" - <<'EOF' || exit 1
import platform, torch, timm, torchvision
print("python", platform.python_version(), "| torch", torch.__version__, "| timm", timm.__version__,
      "| torchvision", torchvision.__version__)
print("cuda:", torch.cuda.is_available(), *(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
EOF
if [ "$device" = cuda ]; then
    "$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: use DEVICE=cpu'" || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
fi

phase "install (no dependency upgraded)"
missing=$("$python" - <<'EOF'
import importlib.util
need = {"pluggy": "pluggy", "yaml": "PyYAML", "safetensors": "safetensors", "tqdm": "tqdm", "pytest": "pytest"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "missing: $missing"
    if [ -n "${WHEELS:-}" ]; then
        "$python" -m pip install -q --no-deps --no-index --find-links "$WHEELS" $missing || exit 1
    else
        "$python" -m pip install -q --no-deps $missing || exit 1
    fi
fi
if ! "$python" -m pip install -q --no-deps --no-build-isolation -e . ; then
    echo "pip install -e . failed; running from the checkout through PYTHONPATH"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import overparam, overparam_zoo; print('overparam', overparam.__version__, 'from', overparam.__file__)" || exit 1

phase "cuda tests"
if [ "$device" = cuda ]; then
    # the tests marked `cuda` and their CPU twins
    timeout "$(limit 150)" "$python" -m pytest -q -p no:randomly -p no:cacheprovider -rs tests/test_cuda.py \
        2>&1 | tee "$out/tests.txt" || status=1
else
    timeout "$(limit 600)" "$python" -m pytest -q -p no:randomly -p no:cacheprovider -rs -m cuda tests/test_cuda.py \
        2>&1 | tee "$out/tests.txt" || status=1
fi

bench() {  # bench NAME LIMIT_S ARGS...: one table, its own file, its own time limit
    local name=$1 limit=$2
    shift 2
    phase "table $name: benchmarks/train_step.py $*"
    timeout "$(limit "$limit")" "$python" benchmarks/train_step.py "$@" | tee "$out/table-$name.md" || status=1
}
if [ "$device" = cuda ]; then
    common=(--device cuda --channels-last --sizes 256x224 --repeats 10 --warmup 3 --eval-batches 1 256 --eval-repeats 10)
    # the main table; its collapse rows (tv:resnet50:4, ...) are the default --collapse
    bench bf16 130 "${common[@]}" --amp bf16 \
        --configs resnet18:2 resnet18:4 resnet18:2:bn resnet50:2 resnet50:4 resnet50:2:bn
    bench paths 30 --device cuda --channels-last --amp bf16 --sizes 256x224 --configs --collapse \
        --path-check resnet50:2 resnet50:4
    bench measured 40 "${common[@]}" --amp bf16 --configs resnet50:2 resnet50:4 --collapse --path-choice measure
    bench fp16 30 "${common[@]}" --amp fp16 --configs resnet50:2 --collapse
    bench compile 75 "${common[@]}" --amp bf16 --warmup 2 --configs resnet18:2 --collapse --compile
else
    tiny=(--device cpu --threads 2 --sizes 2x32 --repeats 1 --warmup 1 --eval-batches 1 --eval-repeats 1 --no-rss)
    bench cpu 300 "${tiny[@]}" --configs resnet18:2 resnet18:2:bn --amp bf16 --collapse
    bench paths 300 "${tiny[@]}" --configs --collapse --path-check resnet18:2 --path-repeats 1
fi

phase "done in $((SECONDS - start)) s (status $status); files in $out"
ls -l "$out"
exit $status
