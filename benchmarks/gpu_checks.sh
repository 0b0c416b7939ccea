#!/usr/bin/env bash
# The checks and benchmarks this project runs on a CUDA machine, in one go.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR] [PART ...]
#
# PART: env, tests, speed, learns, engine (default: env tests speed). Each part
# writes its logs and JSON under OUT_DIR (default results/benchmarks/gpu) and a
# failing part does not stop the next. Needs torch with CUDA, pandas, pyarrow,
# scipy, scikit-learn, tqdm and pytest; bsym itself is read from this checkout.
# BSYM_PUBLIC: a checkout of the public BrainSymphony code (never committed here), timed
# beside ours by the speed part when set.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/benchmarks/gpu}
shift || true
parts=${*:-env tests speed}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0

run() {  # run NAME TIMEOUT CMD...: log to OUT/NAME.log, keep going on failure
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    tail -n 25 "$out/$name.log"
    [ $rc -eq 0 ] || status=1
}

speed() {  # speed NAME ARGS...: one brainsymphony_speed.py run into OUT/NAME.json
    local name=$1
    shift
    run "$name" 420 "$py" benchmarks/brainsymphony_speed.py --device cuda --timeout 150 \
        --out "$out/$name.json" "$@"
}

for part in $parts; do
    case $part in
    env)
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
        "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda);
print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))" ;;
    tests)
        run pytest_cuda 480 "$py" -m pytest -m cuda tests/test_cuda.py -v -p no:cacheprovider
        run pytest_brainsymphony 300 "$py" -m pytest tests/test_brainsymphony.py -q \
            -p no:cacheprovider ;;
    speed)
        speed speed_paper_bf16 --presets paper --batches 1,8,32
        speed speed_paper_bf16_b128 --presets paper --branches fmri,both --batches 128
        speed speed_paper_fp32 --presets paper --branches fmri,both --batches 8 --precision fp32
        speed speed_paper_factorised --presets paper --branches fmri --batches 8 \
            --attention factorised
        speed speed_paper_compile --presets paper --branches fmri --batches 32 --compile
        speed speed_tiny_bf16 --presets tiny --branches both --batches 8,32
        # the public code beside ours: BSYM_PUBLIC, a checkout of it carried to the machine
        if [ -n "${BSYM_PUBLIC:-}" ]; then
            speed speed_paper_public --presets paper --branches both --batches 8,32 \
                --public "$BSYM_PUBLIC"
        fi ;;
    learns)
        # LEARNS_ARGS e.g. "--steps 4000 --stage-steps encoders=1200,perceiver=800,joint=2000"
        run learns_d128 "${LEARNS_TIMEOUT:-560}" "$py" benchmarks/brainsymphony_learns.py \
            --device cuda --dim 128 --set heads=4 --set mlp_dim=512 --lr 1e-3 \
            --batch-size 16 ${LEARNS_ARGS:---steps 4000} --out "$out/learns" ;;
    engine)
        run engine_paper 560 bash -c "
            $py -m bsym data simulate --out /tmp/bsym-sim450 --subjects 40 --rois 450 --sites 1 \
                --site-trs 0.72 --sessions 1 --timepoints 600 --seed 0 --quiet &&
            $py -m bsym pretrain --model brainsymphony --preset paper --data /tmp/bsym-sim450 \
                --out /tmp/bsym-run450 --window 200 --steps ${ENGINE_STEPS:-150} \
                --batch-size 16 --num-workers 4 --no-tracking --log-every 10 &&
            cat /tmp/bsym-run450/run.json" ;;
    *) echo "unknown part $part" >&2; status=2 ;;
    esac
done
exit $status
