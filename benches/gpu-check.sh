#!/usr/bin/env bash
# The GPU machine's check, shipped by `cargo xtask gpu-bundle` (run it from the bundle folder):
#   bash gpu-check.sh
# 1. finds the machine's PyTorch and puts its libtorch on LD_LIBRARY_PATH;
# 2. checks that a forward pass on tch:cuda:0 matches the CPU backend's;
# 3. times the train step (forward + backward + AdamW) of the ~125M-parameter bench model in
#    lmlab and in PyTorch eager on the same GPU, f32 and bf16, and prints a table: ms/step,
#    tokens/s and MFU = 6·params·tokens / time over the measured bf16 matmul peak.
# GPU_CHECK_DEVICE (default tch:cuda:0) and GPU_CHECK_MODEL (default 125M) let the same script
# run on a CPU (tch:cpu, sft-arith-0.75M), as it is tested where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")"
DEVICE="${GPU_CHECK_DEVICE:-tch:cuda:0}"
MODEL="${GPU_CHECK_MODEL:-125M}"
STEPS="${GPU_CHECK_STEPS:-10}"
PYTHON="${PYTHON:-python3}"
TORCH_DIR="$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))')"
export LD_LIBRARY_PATH="$TORCH_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LIBTORCH_BYPASS_VERSION_CHECK=1
case "$DEVICE" in
  tch:cuda:*) PT_DEVICE="cuda:${DEVICE#tch:cuda:}" ;;
  *) PT_DEVICE=cpu ;;
esac
OUT="$(mktemp -d)"
echo "torch: $("$PYTHON" -c 'import torch;print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"

./bin/lmlab bench check --device "$DEVICE" | tee "$OUT/check.jsonl"
if [ "$PT_DEVICE" != cpu ]; then
  "$PYTHON" pytorch_reference.py --peak --device "$PT_DEVICE" | tee "$OUT/peak.jsonl"
fi
for dtype in f32 bf16; do
  ./bin/lmlab bench train --model "$MODEL" --device "$DEVICE" --dtype "$dtype" --steps "$STEPS" \
    | sed 's/^{/{"impl":"lmlab",/' | tee -a "$OUT/train.jsonl"
  "$PYTHON" pytorch_reference.py --model "$MODEL" --device "$PT_DEVICE" --dtype "$dtype" \
    --steps "$STEPS" | tee -a "$OUT/train.jsonl"
done

"$PYTHON" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda f: [json.loads(l) for l in open(os.path.join(out, f)) if l.startswith("{")]
peak = load("peak.jsonl")[0] if os.path.exists(os.path.join(out, "peak.jsonl")) else None
check = load("check.jsonl")[0]
print()
print(f"forward check on {check['device']}: max |dlogit| {check['max_abs_diff']:.2e} "
      f"(logits up to {check['max_abs_logit']:.2f}): {'ok' if check['ok'] else 'FAILED'}")
if peak:
    print(f"measured bf16 peak ({peak['device']}): {peak['tflops']:.0f} TFLOP/s")
print()
print("| impl | model | dtype | ms/step | tokens/s | TFLOP/s | MFU (vs bf16 peak) |")
print("|---|---|---|---|---|---|---|")
for r in load("train.jsonl"):
    mfu = f"{100 * r['tflops'] / peak['tflops']:.1f}%" if peak else "n/a"
    held = r.get("param_dtype", "").lower()
    dtype = r["dtype"] if held in ("", r["dtype"]) else f"{r['dtype']} (held as {held})"
    print(f"| {r['impl']} | {r['model']} | {dtype} | {r['ms_per_step']:.1f} | "
          f"{r['tokens_per_s']:.0f} | {r['tflops']:.2f} | {mfu} |")
PY
