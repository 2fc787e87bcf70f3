#!/usr/bin/env bash
# GPU check: exercise the CUDA path in one command on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu_check.sh [--device cuda|cuda:N|cpu] [--out DIR]   (default: cuda, build/gpu-check)
#
# Steps, each with its log in DIR/STEP.log:
#   device       torch, CUDA and the GPU torch sees (DIR/device.json); on CUDA it fails without a GPU;
#   cuda-tests   `pytest -m cuda`: the tests marked `cuda` (tests/test_cuda.py: the demo model on
#                the GPU against the CPU in fp32, bf16 and fp16; the benchmark on CUDA). On the CPU
#                they skip (exit 0; exit 5, no tests collected, also counts as success); on CUDA
#                TAGS_REQUIRE_CUDA=1 makes them fail instead of skipping when torch sees no GPU;
#   bench        `python -m benchmarks.bench --device D --repeats 1` in fp32, bf16 and fp16 on CUDA
#                (fp32, plus bf16 where the CPU has it natively, and a 64 mm peer cube on the CPU)
#                -> DIR/bench-D.json;
#   app-totalseg, app-lits117
#                `python app --device D` with models/liver-demo ($TAGS_MODEL) on the sample studies
#                (written into build/studies by `tags-train sample-study` when missing)
#                -> DIR/app-NAME/ (SEG, SR, tags_results.json).
# Prints one line per step and writes DIR/gpu_check.json: per step its exit code, seconds and
# output file; exits 1 if any step failed.
#
# Time: on a machine with an NVIDIA GPU the whole check should take under 8 minutes (target; not
# yet run on a GPU), expected to go mostly to process start-up (import monai) and the CPU reference
# prediction in tests/test_cuda.py. It also runs on the CPU (--device cpu), as
# tests/test_gpu_check.py does: 3 to 5 minutes on 2 cores (docs/performance.md, "GPU check").
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
OUT=build/gpu-check
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        -h|--help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (--device cuda|cuda:N|cpu, --out DIR)" >&2; exit 2 ;;
    esac
done
if ! [[ $DEVICE =~ ^(cpu|cuda(:[0-9]+)?)$ ]]; then
    echo "gpu_check.sh: --device must be cpu, cuda or cuda:N, not '$DEVICE'" >&2
    exit 2
fi

PY=.venv/bin/python
MODEL=${TAGS_MODEL:-models/liver-demo}
ulimit -s 32768 2>/dev/null || true   # Holoscan wants a 32 MB stack
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning,ignore::DeprecationWarning}"
mkdir -p "$OUT"
rm -rf "$OUT"/gpu_check.json "$OUT"/device.json "$OUT"/pytest-cuda.xml "$OUT"/bench-*.json "$OUT"/*.log
STEPS=$OUT/steps.tsv
: > "$STEPS"
t_start=$(date +%s.%N)
failed=0

# step NAME OUTPUT CMD...: runs CMD with its output in DIR/NAME.log; success is exit 0 (5 too for
# the pytest step) and, when OUTPUT is given, OUTPUT existing afterwards.
step() {
    local name=$1 output=$2 rc ok=1 t0 seconds
    shift 2
    t0=$(date +%s.%N)
    "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -ne 0 ] && ! { [ "$name" = cuda-tests ] && [ "$rc" -eq 5 ]; }; then ok=0; fi
    if [ -n "$output" ] && [ ! -e "$output" ]; then ok=0; fi
    [ "$ok" = 1 ] || failed=1
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$ok" "$seconds" "$output" >> "$STEPS"
    printf '[gpu-check] %-13s %-6s exit %-3s %7s s  %s\n' "$name" "$([ "$ok" = 1 ] && echo ok || echo FAILED)" \
        "$rc" "$seconds" "${output:-$OUT/$name.log}"
}

# finish: DIR/gpu_check.json from the steps run so far, the last line printed, the exit status.
finish() {
    "$PY" - "$STEPS" "$OUT/gpu_check.json" "$DEVICE" "$t_start" "$(date +%s.%N)" "$OUT/device.json" <<'EOF'
import datetime, json, subprocess, sys
from pathlib import Path
steps_tsv, out, device, t0, t1, device_json = sys.argv[1:]
steps = []
for line in Path(steps_tsv).read_text().splitlines():
    name, rc, ok, seconds, output = line.split("\t")
    steps.append({"name": name, "exit_code": int(rc), "ok": ok == "1", "seconds": float(seconds),
                  "output": output or None, "log": str(Path(out).parent / f"{name}.log")})
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
summary = {"device": device, "ok": all(s["ok"] for s in steps), "seconds": round(float(t1) - float(t0), 1),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": commit,
           "device_info": json.loads(Path(device_json).read_text()) if Path(device_json).exists() else None,
           "steps": steps}
Path(out).write_text(json.dumps(summary, indent=2) + "\n")
failed = [s["name"] for s in steps if not s["ok"]]
verdict = "FAILED: " + ", ".join(failed) if failed else "all steps ok"
print(f"[gpu-check] device {device}: {verdict} in {summary['seconds']:.0f} s; summary {out}")
EOF
    [ "$failed" = 0 ] && [ -f "$OUT/gpu_check.json" ]
    exit $?
}

step device "$OUT/device.json" "$PY" - "$DEVICE" "$OUT/device.json" <<'EOF'
import json, sys
import torch
device, out = torch.device(sys.argv[1]), sys.argv[2]
info = {"device": str(device), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "cuda_devices": torch.cuda.device_count()}
if device.type == "cuda":
    if not torch.cuda.is_available():
        sys.exit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    info["name"] = torch.cuda.get_device_name(device)
    info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    info["bf16_supported"] = torch.cuda.is_bf16_supported()
open(out, "w").write(json.dumps(info, indent=2) + "\n")
print(json.dumps(info))
EOF
[ "$failed" = 0 ] || finish   # no device to run on: the other steps would only fail the same way

require_cuda=0
[ "$DEVICE" = cpu ] || require_cuda=1
step cuda-tests "$OUT/pytest-cuda.xml" env TAGS_REQUIRE_CUDA=$require_cuda \
    "$PY" -m pytest -q -rs -m cuda -p no:cacheprovider --junitxml "$OUT/pytest-cuda.xml" tests

bench_json=$OUT/bench-${DEVICE//:/-}.json
if [ "$DEVICE" = cpu ]; then
    bench_args=(--dtype fp32 --peer-roi 64)
    if [ "$("$PY" -c 'from tags.device import cpu_has_native_bf16; print(int(cpu_has_native_bf16()))')" = 1 ]; then
        bench_args+=(--dtype bf16)
    fi
else
    bench_args=(--dtype fp32 --dtype bf16 --dtype fp16)
fi
step bench "$bench_json" \
    "$PY" -m benchmarks.bench --device "$DEVICE" "${bench_args[@]}" --repeats 1 --json "$bench_json"

if [ ! -d build/studies/lits117 ] || [ ! -d build/studies/totalseg ]; then
    step sample-studies build/studies/lits117 .venv/bin/tags-train sample-study build/studies --overwrite
fi
for study in totalseg lits117; do
    rm -rf "$OUT/app-$study"
    step "app-$study" "$OUT/app-$study/tags_results.json" \
        "$PY" app -i "build/studies/$study" -o "$OUT/app-$study" -m "$MODEL" --device "$DEVICE"
done

finish
