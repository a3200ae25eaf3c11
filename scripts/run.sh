#!/usr/bin/env bash
# The main job: serve the default model. Builds if needed, imports ../shared/models/stories260K and
# carves it (S3A3E8: 3 routed experts of 8 active per token plus 3 shared, on held-apart
# TinyStories calibration text) unless that was done before, prints a ready-to-paste cmoe-cli
# call, then runs cmoe-serve in the foreground on 127.0.0.1:50051 with metrics on :9464.
# Ctrl-C (SIGINT) drains and stops it.
#
#   scripts/run.sh                               # carved stories260K
#   CMOE_CONFIG=dense scripts/run.sh             # the dense import, not carved
#   CMOE_CONFIG=S2A4E8 scripts/run.sh            # another carve of it
#   CMOE_MODEL=/models/my-llama scripts/run.sh   # any checkpoint directory, served as it is
#   scripts/run.sh --max-running 32              # extra arguments go to cmoe-serve
#
# Environment: HOST (127.0.0.1), PORT (50051), METRICS_PORT (9464), BUILD_DIR (build).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9464}
CONFIG=${CMOE_CONFIG:-S3A3E8}
SHARED=../shared/models/stories260K
CALIB=../shared/data/tinystories_val.txt

# Configure once; the build itself is incremental (a no-op when nothing changed).
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  scripts/install-deps.sh --build-only
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMOE_BUILD_TESTS=OFF \
    -DCMOE_BUILD_BENCHMARKS=OFF
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" --target cmoe-serve cmoe-cli cmoe-convert cmoe-carve >&2

if [ -n "${CMOE_MODEL:-}" ]; then
  MODEL=$CMOE_MODEL
elif [ -f "$SHARED/stories260K.bin" ]; then
  DENSE=$BUILD_DIR/models/stories260K
  if [ ! -f "$DENSE/config.json" ]; then
    echo "run.sh: importing $SHARED into $DENSE" >&2
    "$BUILD_DIR/bin/cmoe-convert" llama2c --model "$SHARED/stories260K.bin" \
      --tokenizer "$SHARED/tok512.model" --out "$DENSE" >&2
  fi
  if [ "$CONFIG" = dense ]; then
    MODEL=$DENSE
  else
    MODEL=$BUILD_DIR/models/stories260K-$CONFIG
    # cmoe-carve publishes its output directory complete or not at all.
    if [ ! -f "$MODEL/config.json" ]; then
      if [ ! -f "$CALIB" ]; then
        echo "run.sh: calibration text $CALIB missing (or use CMOE_CONFIG=dense)" >&2
        exit 1
      fi
      echo "run.sh: carving $DENSE into $MODEL ($CONFIG)" >&2
      "$BUILD_DIR/bin/cmoe-carve" --model "$DENSE" --calib "$CALIB" --calib-range 0:400000 \
        --config "$CONFIG" --out "$MODEL"
    fi
  fi
else
  cat >&2 <<MSG
run.sh: no model. Either put karpathy's stories260K (stories260K.bin + tok512.model from
https://huggingface.co/karpathy/tinyllamas) in $SHARED, or point CMOE_MODEL at a Hugging Face
Llama directory (config.json, *.safetensors, tokenizer.json or tokenizer.model).
MSG
  exit 1
fi

cat >&2 <<MSG
run.sh: serving $MODEL on $HOST:$PORT (metrics: http://$HOST:$METRICS_PORT/metrics).
In another terminal:
  $BUILD_DIR/bin/cmoe-cli --target $HOST:$PORT stream --prompt "Once upon a time" --max-new-tokens 64
  $BUILD_DIR/bin/cmoe-cli --target $HOST:$PORT bench --concurrency 32 --requests 256 --max-new-tokens 64
MSG
exec "$BUILD_DIR/bin/cmoe-serve" --model "$MODEL" --host "$HOST" --port "$PORT" \
  --metrics-port "$METRICS_PORT" "$@"
