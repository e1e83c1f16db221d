#!/usr/bin/env bash
# On a machine with a CUDA GPU and no SGLang: two iterations on the embedded backend with the
# model on the GPU (runtime.device cuda, bf16 chosen by `inference_dtype: auto`, DPO on cuda:0),
# first with LoRA, then with full fine-tuning (train.lora: null), then one screen of verdicts.
# Usage:
#   scripts/gpu_check_training.sh MODEL_DIR [WORKDIR]
# MODEL_DIR is any local Hugging Face model directory (the embedded default: `python -c 'from
# mrtk.models import embedded_model_dir; print(embedded_model_dir())'`). MRTK="python -m mrtk.cli"
# runs mrtk from a checkout that is not installed.
set -euo pipefail
model_dir="$1"
work="${2:-$(mktemp -d)}"
mrtk=${MRTK:-mrtk}
mkdir -p "$work"
sizes=(--set "model=$model_dir" --set runtime.device=${DEVICE:-cuda} --set prompts.per_iteration=${PROMPTS:-16}
       --set actor.max_new_tokens=128 --set train.micro_batch_size=2 --set train.gradient_checkpointing=false)
q() { ( cd "$work" && $mrtk query "$1" --run "$2" --format csv | tail -n +2 ); }
fail=0
check() { if [ "$2" = "$3" ]; then echo "OK   $1 ($2)"; else echo "FAIL $1: got '$2', want '$3'"; fail=1; fi; }
for kind in lora full; do
  extra=(); [ $kind = full ] && extra=(--set train.lora=null --set train.lr=5e-6)
  start=$(date +%s)
  ( cd "$work" && $mrtk run "${sizes[@]}" "${extra[@]}" --set "name=gpu-$kind" -q ) || { echo "FAIL $kind: mrtk run exited $?"; fail=1; continue; }
  run="$(ls -td "$work"/runs/*gpu-$kind*/ | head -1)"
  echo "== $kind: $run ($(( $(date +%s) - start ))s)"
  check "$kind: run status" "$(q "select status from runs" "$run")" "success"
  check "$kind: generation dtype on the GPU" "$(q "select inference_dtype from runs" "$run")" "bfloat16"
  echo "     reason: $(q "select inference_dtype_reason from runs" "$run")"
  check "$kind: iterations trained" "$(q "select count(*) from lineage" "$run")" "2"
  check "$kind: it2 generated with M2" "$(q "select string_agg(distinct model_version) from responses where iteration = 2" "$run")" "M2"
  check "$kind: all structured judgements parsed" "$(q "select count(*) = count(score) from judgements" "$run")" "True"
  check "$kind: DPO took steps in both iterations" "$(q "select count(*) from lineage where (stats->>'steps')::int > 0" "$run")" "2"
  if [ $kind = full ]; then
    check "full: no adapter files" "$(ls "$run"/models/M3/adapter_* 2>/dev/null | wc -l)" "0"
    check "full: M3 is a complete model" "$(ls "$run"/models/M3/*.safetensors 2>/dev/null | wc -l | tr -d ' ' | sed 's/^[1-9][0-9]*$/yes/')" "yes"
  fi
  echo "     stages:"; q "select iteration || ' ' || stage || ' ' || round(seconds, 1) || 's' from stages order by started_at" "$run" | sed 's/^/       /'
done
[ $fail = 0 ] && echo "VERDICT: OK, two iterations on the GPU with the embedded backend (LoRA and full fine-tuning)" || echo "VERDICT: FAIL"
exit $fail
