#!/usr/bin/env bash
# The GPU check. On one CUDA GPU: the four runners in fp32, bf16-mixed and fp16-mixed; DeepSpeed
# ZeRO-2 and ZeRO-3 (Fabric, Trainer, Accelerate) where the deepspeed package is installed; FSDP2
# (all four) and Lightning's FSDP1 (Fabric, Trainer). It has never run on a GPU. Every model.pt is compared with plain PyTorch's: max |diff| per runner and mode,
# a summary, exit status 1 if any check fails. Meant to finish well under 5 minutes.
#
#   scripts/gpu_check.sh                          # needs a CUDA GPU (uses the first one)
#   GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh     # dry run on a CPU: fp32 and bf16-mixed only
#
# Environment: PYTHON (python), GPU_CHECK_DIR (where runs go; default a new temp dir),
# GPU_CHECK_JOBS (runs at once; 4 on cuda, 2 on cpu), GPU_CHECK_TIMEOUT (seconds per run; 150),
# GPU_CHECK_PORT (first rendezvous port; 29700).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
TIMEOUT=${GPU_CHECK_TIMEOUT:-150}
PORT=${GPU_CHECK_PORT:-29700}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
unset RANK LOCAL_RANK WORLD_SIZE MASTER_ADDR MASTER_PORT # never inherit a launcher's

case $DEVICE in
cuda)
    JOBS=${GPU_CHECK_JOBS:-4}
    export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} # one GPU, whatever the machine has
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
        echo "error: no CUDA GPU is visible; for a dry run on a CPU use GPU_CHECK_DEVICE=cpu" >&2
        exit 2
    fi
    ;;
cpu) JOBS=${GPU_CHECK_JOBS:-2} ;;
*)
    echo "error: GPU_CHECK_DEVICE must be cuda or cpu, not '$DEVICE'" >&2
    exit 2
    ;;
esac
if [[ -e $OUT && -n $(ls -A "$OUT") ]]; then
    echo "error: $OUT is not empty; point GPU_CHECK_DIR at a new directory" >&2
    exit 2
fi
mkdir -p "$OUT"
SECONDS=0
echo "gpu_check: device $DEVICE, runs in $OUT, $JOBS at a time"

# start MODE RUNNER COMMAND...: one run in the background; its log and exit status go beside
# its run directory, $OUT/MODE/RUNNER. At most $JOBS at once.
start() {
    local mode=$1 runner=$2
    shift 2
    mkdir -p "$OUT/$mode"
    while (($(jobs -rp | wc -l) >= JOBS)); do
        wait -n || true
    done
    (
        rc=0
        MASTER_PORT=$PORT timeout "$TIMEOUT" "$@" >"$OUT/$mode/$runner.log" 2>&1 || rc=$?
        echo "$rc" >"$OUT/$mode/$runner.rc"
    ) &
    PORT=$((PORT + 1))
}

# The Trainer writes into $OUT/MODE/lightning (LightningCLI's logger: save_dir/name/version).
lightning() {
    local mode=$1
    shift
    start "$mode" lightning "$PYTHON" lightning_module.py fit "$@" \
        --trainer.logger.init_args.save_dir "$OUT/$mode" \
        --trainer.logger.init_args.name "" --trainer.logger.init_args.version lightning
}

# accelerate launch, as a user types it, with a config file from configs/accelerate/.
accelerate_launch() {
    local mode=$1 config=$2
    start "$mode" accelerate "$PYTHON" -m accelerate.commands.launch --config_file "$config" \
        --main_process_port "$PORT" accelerate_train.py --run-dir "$OUT/$mode/accelerate"
}

if [[ $DEVICE == cuda ]]; then
    PRECISIONS=(32-true bf16-mixed 16-mixed)
    ACCELERATOR=(--accelerator cuda) TRAINER_ACCELERATOR=gpu ACCELERATE_CPU=()
else
    PRECISIONS=(32-true bf16-mixed)
    ACCELERATOR=(--accelerator cpu) TRAINER_ACCELERATOR=cpu ACCELERATE_CPU=(--cpu)
    echo "SKIP 16-mixed, DeepSpeed, FSDP: they need CUDA (a cpu dry run)"
fi

for precision in "${PRECISIONS[@]}"; do
    case $precision in
    32-true) mixed=no ;;
    bf16-mixed) mixed=bf16 ;;
    *) mixed=fp16 ;;
    esac
    start "$precision" torch "$PYTHON" simple_train.py --device "$DEVICE" \
        --precision "$precision" --run-dir "$OUT/$precision/torch"
    start "$precision" fabric "$PYTHON" fabric_train.py "${ACCELERATOR[@]}" --devices 1 \
        --precision "$precision" --run-dir "$OUT/$precision/fabric"
    lightning "$precision" --trainer.accelerator "$TRAINER_ACCELERATOR" --trainer.devices 1 \
        --trainer.precision "$precision"
    start "$precision" accelerate "$PYTHON" accelerate_train.py \
        ${ACCELERATE_CPU[@]+"${ACCELERATE_CPU[@]}"} --mixed-precision "$mixed" \
        --run-dir "$OUT/$precision/accelerate"
done

if [[ $DEVICE == cuda ]]; then
    if "$PYTHON" -c 'import deepspeed' >/dev/null 2>&1; then
        for stage in 2 3; do
            mode=deepspeed_stage_$stage
            start "$mode" fabric "$PYTHON" fabric_train.py --accelerator cuda --devices 1 \
                --strategy "$mode" --run-dir "$OUT/$mode/fabric"
            lightning "$mode" --config "configs/lightning/deepspeed_zero$stage.yaml" \
                --trainer.devices 1
            accelerate_launch "$mode" "configs/accelerate/deepspeed_zero$stage.json"
        done
    else
        echo "SKIP DeepSpeed: the deepspeed package is not installed (pip install -e '.[deepspeed]')"
    fi
    # FSDP2 (fully_shard), the project's FSDP: the same paths the CPU tests train on 2 processes.
    start fsdp2 torch "$PYTHON" -m torch.distributed.run --nproc_per_node 1 \
        --master_port "$PORT" simple_train.py --strategy fsdp2 --run-dir "$OUT/fsdp2/torch"
    start fsdp2 fabric "$PYTHON" fabric_train.py --accelerator cuda --devices 1 \
        --strategy fsdp2 --run-dir "$OUT/fsdp2/fabric"
    lightning fsdp2 --config configs/lightning/fsdp2.yaml --trainer.accelerator gpu \
        --trainer.devices 1 --trainer.strategy.init_args.data_parallel_size 1
    accelerate_launch fsdp2 configs/accelerate/fsdp.json
    # Lightning's FSDPStrategy (FSDP1), the other one, GPUs only.
    start fsdp1 fabric "$PYTHON" fabric_train.py --accelerator cuda --devices 1 --strategy fsdp \
        --run-dir "$OUT/fsdp1/fabric"
    lightning fsdp1 --config configs/lightning/fsdp.yaml --trainer.devices 1
fi
wait
echo "gpu_check: all runs ended after ${SECONDS}s; comparing"

status=0
"$PYTHON" - "$OUT" "$DEVICE" <<'EOF' || status=$?
"""Compare every run's model.pt with plain PyTorch's; exit 1 if any check fails."""

import json
import sys
from pathlib import Path

import torch

out, device = Path(sys.argv[1]), sys.argv[2]
RUNNERS = ("torch", "lightning", "fabric", "accelerate")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
# max |diff| after 5 epochs. The same precision in two runners runs the same kernels on the same
# batches: bitwise on CPU (measured), allowed 1e-5 here. Mixed precision vs fp32: bf16-mixed
# measured 2.07e-3 on CPU; fp16's loss scaler may skip the first steps. Below the floor, the run
# did not really compute in 16 bits. DeepSpeed and FSDP: vs plain fp32 (their own reduction and
# optimizer step code; not yet measured on a GPU, so these are first guesses).
SAME_PRECISION_TOL = 1e-5
VS_FP32 = {"bf16-mixed": (1e-6, 1e-2), "16-mixed": (1e-6, 2e-2)}
STRATEGY_TOL = {"deepspeed_stage_2": 1e-4, "deepspeed_stage_3": 1e-4, "fsdp2": 1e-5, "fsdp1": 1e-5}


def load(mode: str, runner: str) -> tuple[dict | None, str]:
    """The run's weights, or None and why not."""
    run_dir = out / mode / runner
    rc = (out / mode / f"{runner}.rc").read_text().strip()
    if rc != "0":
        log = (out / mode / f"{runner}.log").read_text(errors="replace").strip().splitlines()
        tail = " | ".join(log[-3:]) if log else "(no output)"
        return None, f"exit status {rc}{' (timed out)' if rc == '124' else ''}: {tail[-300:]}"
    try:
        weights = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    except Exception as err:
        return None, f"model.pt not loadable: {type(err).__name__}: {err}"[:300]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics["device"] != device:
        return None, f"trained on {metrics['device']}, not {device}"
    if mode in PRECISIONS and metrics["precision"] != mode:
        return None, f"metrics.json says precision {metrics['precision']}"
    return weights, ""


def diff(a: dict, b: dict) -> tuple[float | None, str]:
    if a.keys() != b.keys():
        return None, f"keys differ: {sorted(a)} vs {sorted(b)}"
    for key in a:
        if a[key].shape != b[key].shape:  # e.g. a ZeRO-3 / FSDP shard saved instead of the whole
            return None, f"{key} has shape {tuple(a[key].shape)}, not {tuple(b[key].shape)}"
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a), ""


modes = [m for m in (*PRECISIONS, *STRATEGY_TOL) if (out / m).is_dir()]
fp32_plain, fp32_why = load("32-true", "torch") if "32-true" in modes else (None, "not run")
failures, checks = [], 0
print(f"\n{'mode':<18} {'runner':<11} {'vs plain, same mode':<24} {'vs plain fp32':<30} result")
for mode in modes:
    plain, plain_why = load(mode, "torch") if mode in PRECISIONS else (None, "")
    for runner in RUNNERS:
        if not (out / mode / f"{runner}.rc").exists():
            continue
        weights, why = load(mode, runner)
        problems, same_col, fp32_col = [], "", ""
        if weights is None:
            problems.append(why)
        elif mode in PRECISIONS:
            if runner == "torch":
                same_col = "reference"
            elif plain is None:
                problems.append(f"no plain {mode} run to compare with ({plain_why})")
            else:
                d, why = diff(weights, plain)
                checks += 1
                if d is None:
                    problems.append(why)
                else:
                    same_col = "bitwise" if d == 0 else f"{d:.2e} (<= {SAME_PRECISION_TOL:.0e})"
                    if d > SAME_PRECISION_TOL:
                        problems.append(f"{d:.2e} from plain {mode}")
            if mode in VS_FP32 and fp32_plain is not None:
                low, high = VS_FP32[mode]
                d, why = diff(weights, fp32_plain)
                checks += 1
                if d is None:
                    problems.append(why)
                else:
                    fp32_col = f"{d:.2e} (in [{low:.0e}, {high:.0e}])"
                    if d > high:
                        problems.append(f"{d:.2e} from fp32, more than {high:.0e}")
                    if d < low:
                        problems.append(f"{d:.2e} from fp32: not computed in 16 bits")
        else:
            tol = STRATEGY_TOL[mode]
            if fp32_plain is None:
                problems.append(f"no plain fp32 run to compare with ({fp32_why})")
            else:
                d, why = diff(weights, fp32_plain)
                checks += 1
                if d is None:
                    problems.append(why)
                else:
                    fp32_col = f"{d:.2e} (<= {tol:.0e})"
                    if d > tol:
                        problems.append(f"{d:.2e} from plain fp32, more than {tol:.0e}")
        result = "ok" if not problems else "FAIL: " + "; ".join(problems)
        print(f"{mode:<18} {runner:<11} {same_col:<24} {fp32_col:<30} {result}")
        failures += [f"{mode} {runner}: {p}" for p in problems]

print(f"\ngpu_check: {len(modes)} modes, {checks} comparisons, {len(failures)} failure(s)")
for failure in failures:
    print(f"  FAIL {failure}")
sys.exit(1 if failures else 0)
EOF

echo "gpu_check: ${SECONDS}s in all (budget 300s); runs and logs in $OUT"
if ((SECONDS > 300)); then
    echo "gpu_check: WARNING: over the 5-minute budget"
fi
if ((status != 0)); then
    echo "gpu_check: FAILED"
    exit 1
fi
echo "gpu_check: PASSED"
