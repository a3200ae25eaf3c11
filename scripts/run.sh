#!/usr/bin/env bash
# The main job on the default model: builds if needed, imports the model, and generates a story.
#
#   scripts/run.sh                        # ../shared/models/stories260K, "Once upon a time"
#   CMOE_MODEL=/models/my-llama scripts/run.sh "The little dog"
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
PROMPT=${1:-Once upon a time}
SHARED=../shared/models/stories260K

# Configure once; the build itself is incremental (a no-op when nothing changed).
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  scripts/install-deps.sh
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" --target cmoe-generate cmoe-convert >&2

if [ -n "${CMOE_MODEL:-}" ]; then
  MODEL=$CMOE_MODEL
elif [ -f "$SHARED/stories260K.bin" ]; then
  MODEL=$BUILD_DIR/models/stories260K
  if [ ! -f "$MODEL/config.json" ]; then
    echo "run.sh: importing $SHARED into $MODEL" >&2
    "$BUILD_DIR/bin/cmoe-convert" llama2c --model "$SHARED/stories260K.bin" \
      --tokenizer "$SHARED/tok512.model" --out "$MODEL"
  fi
else
  cat >&2 <<MSG
run.sh: no model. Either put karpathy's stories260K (stories260K.bin + tok512.model from
https://huggingface.co/karpathy/tinyllamas) in $SHARED, or point CMOE_MODEL at a Hugging Face
Llama directory (config.json, *.safetensors, tokenizer.json or tokenizer.model).
MSG
  exit 1
fi

exec "$BUILD_DIR/bin/cmoe-generate" --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 200
