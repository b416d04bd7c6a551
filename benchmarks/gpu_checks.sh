#!/usr/bin/env bash
# Every GPU check that issues #16 and #18 ask for, in one call on a lent GPU machine (it has torch,
# transformers, sentence-transformers, accelerate and pyarrow; not datakit's stack, no network).
#
# Prepare here (CPU, once; about 20 MiB, so the device tool can carry it):
#   .venv/bin/python benchmarks/train_throughput.py --prepare --workdir gpu-kit --records 2000
#   .venv/bin/pip download --no-deps -d gpu-kit/wheels datasets==5.0.0 dill multiprocess  # ST's trainer needs them
#   .venv/bin/pip download --no-deps -d gpu-kit/wheels typer click shellingham rich markdown-it-py mdurl pygments \
#     pydantic pydantic-core annotated-types typing-inspection  # the trainer CLI (typer + rich, typed config)
#   for v in 3.10 3.12 3.13; do .venv/bin/pip download --no-deps --only-binary=:all: --python-version $v \
#     -d gpu-kit/wheels multiprocess pydantic-core; done                               # their wheels are per Python
# Run there (device `run`, carry ["gpu-kit"], timeout_s 600; about 8 minutes on one H200):
#   bash benchmarks/gpu_checks.sh gpu-kit "$OUT"
# Rehearse here without a GPU (tiny model, small batches):
#   DEVICE=cpu SIZES=tiny BATCH=8 STEPS=4 PY=.venv/bin/python bash benchmarks/gpu_checks.sh gpu-kit out/gpu-rehearsal
#
# Each check writes OUT/<name>.txt (the trainer runs also OUT/<run>/log.jsonl) and the next one runs even if
# one fails or hits its time limit. In order of what they unblock:
#   throughput   trainer (varlen or micro-batches) vs its padded path vs sentence-transformers, 0.5B and 1.5B,
#                batch 32 x (1 + 4) texts, train mode (issue #18's target: >= 1.3x sentence-transformers)
#   fsdp         `accelerate launch --config_file trainer/configs/fsdp.yaml --num_processes 1` on 0.5B: FSDP2
#                with activation checkpointing and bf16, a checkpoint at step 2, then fsdp-resume from it
#   gradcache    `trainer run` on 0.5B at the report's global batch of 256 through GradCache (chunks of 32):
#                tokens/s and gpu_peak_gib, against plain32 (batch 32, no GradCache)
set -u
KIT=${1:?usage: gpu_checks.sh KIT OUT}
OUT=${2:?usage: gpu_checks.sh KIT OUT}
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-0.5B,1.5B}
BATCH=${BATCH:-32}
STEPS=${STEPS:-20}
SIZE=${SIZES%%,*}  # the model of the trainer runs
PY=${PY:-python}
mkdir -p "$OUT"
KIT=$(cd "$KIT" && pwd)
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false

(nvidia-smi || true; $PY -c "import torch, transformers, sentence_transformers, accelerate as a; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'st', sentence_transformers.__version__, \
'accelerate', a.__version__)") > "$OUT/machine.txt" 2>&1
if ! $PY -c "import datasets" 2>/dev/null && [ -d "$KIT/wheels" ]; then
  $PY -m pip install --no-index --no-deps --find-links "$KIT/wheels" datasets dill multiprocess > "$OUT/pip.txt" 2>&1
fi
if ! $PY -c "import typer, rich, pydantic" 2>/dev/null && [ -d "$KIT/wheels" ]; then  # the trainer CLI
  $PY -m pip install --no-index --no-deps --find-links "$KIT/wheels" typer click shellingham rich markdown-it-py mdurl \
    pygments pydantic pydantic-core annotated-types typing-inspection >> "$OUT/pip.txt" 2>&1
fi

check() {  # name, seconds, command...: run with a time limit, keep its output, show its tail
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
  echo "rc=$? seconds=$((SECONDS - t0))" | tee -a "$OUT/$name.txt"
  tail -n +2 "$OUT/$name.txt" | grep -v "it/s\]\|Loading weights\|s/step" | tail -n 20
}

check throughput "${LIMIT_THROUGHPUT:-330}" $PY benchmarks/train_throughput.py --sizes "$SIZES" --batch "$BATCH" \
  --steps "$STEPS" --device "$DEVICE" --workdir "$KIT"

MODEL="$KIT/qwen2-$SIZE"
config() {  # name, batch_size, grad_cache_chunk, steps, save_every
  cat > "$OUT/$1.yaml" <<EOF
model: {name_or_path: $MODEL, tokenizer: $MODEL/tok}
data: {shards: $KIT/corpus/out, batch_size: $2, negatives: 4, query_max_length: 256, doc_max_length: 512}
output_dir: $OUT/$1
stages: [{steps: $4, lr: 1.0e-5, warmup_steps: 1}]
grad_cache_chunk: $3
save_every: $5
log_every: 1
EOF
}
config fsdp "$BATCH" 0 4 2
config gradcache256 $((BATCH * 8)) "$BATCH" 3 0
config plain32 "$BATCH" 0 6 0

FSDP_CFG="$OUT/fsdp-launch.yaml"
sed -e 's/^num_processes: .*/num_processes: 1/' trainer/configs/fsdp.yaml > "$FSDP_CFG"
LAUNCH=(-m trainer.cli)
if [ "$DEVICE" = cpu ]; then  # accelerate has no FSDP without an accelerator: the tests' launcher keeps it
  sed -i -e 's/^use_cpu: .*/use_cpu: true/' -e 's/^mixed_precision: .*/mixed_precision: "no"/' \
    -e 's/^num_processes: .*/num_processes: 2/' "$FSDP_CFG"
  LAUNCH=(tests/fsdp_cpu.py)
fi
check fsdp "${LIMIT:-150}" $PY -m accelerate.commands.launch --config_file "$FSDP_CFG" "${LAUNCH[@]}" run "$OUT/fsdp.yaml"
mv "$OUT/fsdp/log.jsonl" "$OUT/fsdp/log-first.jsonl" 2>/dev/null
rm -f "$OUT/fsdp/stage1/done"
check fsdp-resume "${LIMIT:-150}" $PY -m accelerate.commands.launch --config_file "$FSDP_CFG" "${LAUNCH[@]}" run \
  "$OUT/fsdp.yaml"
check gradcache "${LIMIT:-150}" $PY -m trainer.cli run "$OUT/gradcache256.yaml"
check plain32 "${LIMIT:-150}" $PY -m trainer.cli run "$OUT/plain32.yaml"

echo "== summary (last log record of each run)"
for log in fsdp/log-first fsdp/log gradcache256/log plain32/log; do
  [ -f "$OUT/$log.jsonl" ] && echo "$log: $(tail -n 1 "$OUT/$log.jsonl")"
done
# keep what comes back small: checkpoints and exported weights stay on the machine
rm -rf "$OUT"/*/stage*/state-* "$OUT"/*/stage*/model.pt "$OUT"/*/model/*.safetensors
