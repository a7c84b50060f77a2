#!/usr/bin/env bash
# The GPU benchmark in one command: cnnjax.bench on ResNet-50 (bf16, batch 256, fake input and the real
# pipeline on locally built JPEG files) and the CIFAR ResNet-20/56 (bf16, batch 1024), each followed by PyTorch
# eager AMP (bf16, channels_last) on the same network, batch and GPU.
#
#   launch/gpu_bench.sh OUT_DIR                 # on a GPU machine with cnnjax's dependencies installed
#   QUICK=1 launch/gpu_bench.sh OUT_DIR         # tiny sizes on any machine: checks the script itself
#
# Writes OUT_DIR/results.jsonl (one JSON object per run: cnnjax.bench's report, or the PyTorch run's with
# "framework": "pytorch") and OUT_DIR/log.txt, and prints a table at the end. A run that fails is logged and
# the next one starts; without a CUDA PyTorch the PyTorch runs are skipped. Environment: PYTHON (default python3),
# WORKERS (grain processes decoding JPEGs, default: the CPU count less 2).
set -uo pipefail

out=${1:?usage: launch/gpu_bench.sh OUT_DIR}
mkdir -p "$out"
results=$out/results.jsonl
log=$out/log.txt
: >"$results"
: >"$log"
py=${PYTHON:-python3}
workers=${WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
images_dir=$(mktemp -d)
trap 'rm -rf "$images_dir"' EXIT

if [[ ${QUICK:-0} == 1 ]]; then
  r50=(--config.batch_size=8 --config.image_size=64)
  cifar_batch=16 images=40 classes=4 timing=(--steps=2 --window=1) torch_timing=(--steps=2 --window=1 --warmup=1)
else
  r50=(--config.batch_size=256)
  cifar_batch=1024 images=5000 classes=1000 timing=(--steps=50 --window=10) torch_timing=(--steps=50 --window=10 --warmup=5)
fi

# The JPEG files for the real pipeline are written while the first runs compile.
"$py" -c "from cnnjax.throughput import imagenet_like; imagenet_like('$images_dir', $images, $classes)" \
  >>"$log" 2>&1 &
images_ready=$!

bench() {  # cnnjax.bench with the given config and overrides; its JSON line goes to results.jsonl
  echo "== cnnjax.bench $*" | tee -a "$log"
  if ! "$py" -m cnnjax.bench --format=json "${timing[@]}" "$@" >>"$results" 2>>"$log"; then
    echo "   failed (see log.txt):" && tail -n 3 "$log"
  fi
}

torch_peer() {  # MODEL BATCH: the PyTorch peer (cnnjax/bench_torch.py), AMP bf16, channels_last, on the GPU
  echo "== pytorch $*" | tee -a "$log"
  "$py" -m cnnjax.bench_torch --model="$1" --batch="$2" --device=cuda --dtype=bfloat16 "${torch_timing[@]}" \
    >>"$results" 2>>"$log" || echo "   skipped or failed (see log.txt)"
}

{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1; nproc
  "$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee -a "$log"

bench --config=configs/resnet.py:50 --config.dtype=bfloat16 "${r50[@]}"
torch_peer resnet50 "${r50[0]#--config.batch_size=}"
wait "$images_ready" || echo "   writing the JPEG files failed (see log.txt)"
bench --config=configs/resnet.py:50 --config.dtype=bfloat16 "${r50[@]}" --input=real \
  --config.dataset="imagefolder:$images_dir" --config.workers="$workers"
for depth in 20 56; do
  bench --config="configs/cifar_resnet.py:$depth" --config.dtype=bfloat16 --config.batch_size="$cifar_batch"
  torch_peer "resnet$depth" "$cifar_batch"
done

"$py" - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
print(f"{'framework':9} {'model':9} {'input':5} {'batch':>5} {'step_ms':>8} {'img/s':>9} {'mfu':>6} {'compile_s':>9} {'startup_s':>9}")
for r in rows:
    print(f"{r.get('framework', 'cnnjax'):9} {r['model']:9} {r['input']:5} {r['batch']:5} {r['step_ms']:8.2f} {r['img_per_s']:9.1f} "
          f"{r.get('mfu') if r.get('mfu') is not None else '':>6} {r.get('compile_s', ''):>9} {r.get('startup_s', ''):>9}")
EOF
