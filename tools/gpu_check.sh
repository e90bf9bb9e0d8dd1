#!/usr/bin/env bash
# The GPU check: probes a machine with a CUDA GPU, installs attnbench there without network access, runs the
# CUDA tests and small GPU runs, and writes everything it measured to $OUT.
#
# It expects a remote machine with Python 3.12, torch + CUDA, transformers and pluggy, but no `datasets`, no asv
# and not the packaged MiniLM, reached with at most 64 MiB of files per call; a cython_kernels extension built
# elsewhere does not load against that machine's torch (the int8 backends then report themselves unavailable,
# which this check expects). Three steps:
#
#   1. there:  bash tools/gpu_check.sh probe                 → $OUT/probe.txt, $OUT/missing.txt (pip names)
#   2. here:   tools/gpu_check.sh bundle [missing.txt]       → gpu_bundle/: the packaged tokenizer's files and
#              cp312 manylinux wheels of the missing packages (pip download --no-deps; checks the 64 MiB limit)
#   3. there:  bash tools/gpu_check.sh all                   (with gpu_bundle/ copied beside the checkout;
#              about 10 minutes: install + models <= 1 min, tests <= 2 min, four runs <= 100 s each, CPU run <= 60 s)
#              installs the wheels into .gpu_site/ and the project without dependencies, saves random-weight
#              BERT models (tiny, MiniLM-L6 shape, BERT-base), runs the CUDA tests and small GPU runs, and writes
#              logs, junit XML and the result rows (a Parquet store, plus CSV) to $OUT.
#
# What it measures belongs in a dated lab report, docs/lab/YYYY-MM-DD-<topic>.md, with the machine (GPU name,
# driver, CUDA), the commit and the command.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu_out}
BUNDLE=$ROOT/gpu_bundle
SITE=$ROOT/.gpu_site
MODELS=${TMPDIR:-/tmp}/attnbench-gpu-models
mkdir -p "$OUT"
# import name → pip name, for everything attnbench imports on the run path and in tests
DEPS="datasets:datasets pyarrow:pyarrow pandas:pandas numpy:numpy sklearn:scikit-learn scipy:scipy tqdm:tqdm
fsspec:fsspec pluggy:pluggy transformers:transformers dill:dill multiprocess:multiprocess xxhash:xxhash
yaml:pyyaml huggingface_hub:huggingface-hub safetensors:safetensors tokenizers:tokenizers pytest:pytest
filelock:filelock packaging:packaging"

probe() {
  {
    echo "date: $(date -u +%FT%TZ)  host: $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
    $PY - <<'EOF'
import platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"  cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB sm_{p.major}{p.minor}")
    print("cpu threads", torch.get_num_threads())
except Exception as exc:
    print("torch: cannot import:", exc)
EOF
  } 2>&1 | tee "$OUT/probe.txt"
  : > "$OUT/missing.txt"
  for pair in $DEPS; do
    mod=${pair%%:*}; pipname=${pair##*:}
    if PYTHONPATH="$SITE" $PY -c "import $mod" 2>/dev/null; then
      echo "ok       $mod $(PYTHONPATH="$SITE" $PY -c "import $mod; print(getattr($mod, '__version__', ''))" 2>/dev/null)"
    else
      echo "MISSING  $mod"; echo "$pipname" >> "$OUT/missing.txt"
    fi
  done | tee -a "$OUT/probe.txt"
}

bundle() {  # here, on a machine with the project's venv and network access to PyPI
  local missing=${1:-$OUT/missing.txt}
  mkdir -p "$BUNDLE/wheels" "$BUNDLE/tokenizer"
  PYTHONPATH="$ROOT" "${VENV_PYTHON:-.venv/bin/python}" - "$BUNDLE/tokenizer" <<'EOF'
import sys
from transformers import AutoTokenizer
from harness.models.embedded import embedded_model_dir
AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(sys.argv[1])
EOF
  if [ -s "$missing" ]; then
    # versions as in the project's venv where it has them; wheels for the GPU machine's Python
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -c constraints.txt -d "$BUNDLE/wheels" $(grep -v '^torch$' "$missing")
  fi
  local size; size=$(du -sm "$BUNDLE" | cut -f1)
  echo "gpu_bundle: ${size} MiB"
  [ "$size" -lt 62 ] || { echo "over the 64 MiB a call may carry: split the wheels into two bundles and run 'install' once per bundle"; exit 1; }
}

install() {
  mkdir -p "$SITE"
  if compgen -G "$BUNDLE/wheels/*.whl" > /dev/null; then
    $PY -m pip install --quiet --no-deps --no-index --target "$SITE" --upgrade "$BUNDLE"/wheels/*.whl \
      2>&1 | tail -5 | tee "$OUT/install.txt"
  fi
  # the project itself without dependencies (its Cython extension is not expected to build or load here)
  PYTHONPATH="$SITE" $PY -m pip install --quiet --no-deps --no-build-isolation --no-index --target "$SITE" --upgrade . \
    > "$OUT/install_project.txt" 2>&1 || echo "pip install of the project failed (see install_project.txt); using PYTHONPATH=$ROOT" | tee -a "$OUT/install.txt"
}

env_run() { PYTHONPATH="$SITE:$ROOT" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 "$@"; }

models() {  # random weights: speed only (quality of a random model is chance)
  env_run $PY - "$BUNDLE/tokenizer" "$MODELS" <<'EOF'
import sys, torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
shapes = {"tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
          "minilm-l6-random": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
          "bert-base-random": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}
for name, shape in shapes.items():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, num_labels=2,
                        attn_implementation="sdpa", **shape)
    path = f"{sys.argv[2]}/{name}"
    BertForSequenceClassification(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    print("saved", path)
EOF
}

all() {
  local started=$SECONDS
  probe > /dev/null
  install
  models 2>&1 | tail -3
  env_run $PY -m harness backends --device cuda --dtype bfloat16 > "$OUT/backends_cuda_bf16.txt" 2>&1
  # 1. CUDA tests (the CPU ones run too: they are fast), junit for the record
  ATTNBENCH_TEST_TOKENIZER="$BUNDLE/tokenizer" env_run timeout 120 $PY -m pytest -q -p no:cacheprovider \
    tests/test_devices.py --junitxml="$OUT/junit_devices.xml" -ra 2>&1 | tail -15 | tee "$OUT/pytest.txt"
  # 2. small GPU runs with random weights: the issue's `run --device cuda --dtype bfloat16 -b dense -b topk:k=16`
  #    (fbgemm-int8 must be listed as unavailable), bf16 and fp32, MiniLM-L6 and BERT-base shapes
  local common=(--tasks sst2 --limit 256 --fidelity-examples 32 --repeats 20 --warmup 5 --no-progress
                --store "$OUT/store")
  for model in minilm-l6-random bert-base-random; do
    for dtype in bfloat16 float32; do
      echo "== $model $dtype ($((SECONDS - started)) s)"
      env_run timeout 100 $PY -m harness run --device cuda --dtype "$dtype" -b dense -b topk:k=16 -b fbgemm-int8 \
        --model "$MODELS/$model" --batch-size 32 --seq-len 128 "${common[@]}" 2>&1 | tail -40
    done
  done 2>&1 | tee "$OUT/runs.txt"
  # 3. the same dense forward on this machine's CPU cores, for tokens/s side by side
  env_run timeout 60 $PY -m harness run --device cpu -b dense --model "$MODELS/minilm-l6-random" --batch-size 32 \
    --seq-len 128 "${common[@]}" --repeats 5 --fidelity-examples 0 2>&1 | tail -20 | tee "$OUT/run_cpu.txt"
  env_run $PY - "$OUT" <<'EOF'
import sys
from harness import read_results
df = read_results(f"{sys.argv[1]}/store")
df.drop(columns=["samples"]).to_csv(f"{sys.argv[1]}/rows.csv", index=False)
speed = df[df["category"].isin(["speed", "memory", "throughput"])]
print(speed.pivot_table(index=["model", "dtype", "device", "batch_size", "metric"], columns="backend",
                        values="value", aggfunc="median").to_string())
EOF
  echo "gpu_check: done in $((SECONDS - started)) s; results in $OUT"
}

case "${1:-all}" in
  probe) probe ;;
  bundle) bundle "${2:-}" ;;
  install) install ;;
  models) models ;;
  all) all 2>&1 | tee "$OUT/gpu_check.log" ;;
  *) echo "usage: tools/gpu_check.sh probe|bundle [missing.txt]|install|models|all" >&2; exit 2 ;;
esac
