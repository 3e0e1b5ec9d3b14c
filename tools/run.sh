#!/usr/bin/env bash
# The main job, end to end on a fresh machine:
#   1. set up .venv (tools/setup.sh, idempotent);
#   2. once: convert the two teacher classifiers from ../shared/models (YAMNet from the
#      per-channel int8 tflite, EfficientAT mn04) and register them (out/registry);
#   3. classify the reference recordings through the transcoders shipped in the package:
#      audio -> third-octave levels -> transcoder -> classifier -> Parquet predictions
#      (out/predictions-yamnet, out/predictions-efficientat-mn04) and a plot of the first input (out/plot.png).
# Pass other audio files or third-octave archives as arguments to classify those instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
SHARED=${ST_SHARED_DIR:-../shared}
export SPECTRAL_TRANSCODER_HOME=${SPECTRAL_TRANSCODER_HOME:-$PWD/out/registry}
ST=.venv/bin/spectral-transcoder
M=$SHARED/models
mkdir -p out/models

register() {  # NAME CONVERT-ARGS...: convert a classifier once and import it into the registry
  local name=$1
  shift
  if [ ! -f "$SPECTRAL_TRANSCODER_HOME/classifier/$name.onnx" ]; then
    .venv/bin/python -m training convert "$@" -o "out/models/$name.onnx"
    "$ST" models import "out/models/$name.onnx" --name "$name"
  fi
}
register yamnet yamnet-tflite "$M/yamnet_int8_perchannel.tflite" \
  --yamnet-class-map "$M/yamnet_class_map.csv" --labels "$M/class_labels_indices.csv"
register efficientat-mn04 efficientat "$M/mn04_as_mAP_432.pt" --labels "$M/class_labels_indices.csv"

if [ $# -gt 0 ]; then
  inputs=("$@")
else
  inputs=("$SHARED"/reference/audio/*.wav)
fi
for clf in yamnet efficientat-mn04; do
  # --reference auto: each file is scaled as the transcoders' training audio was (peak level).
  "$ST" classify "${inputs[@]}" -o "out/predictions-$clf" -c "$clf" --reference auto --windows both --top-k 5 \
    --no-progress
done
"$ST" plot "${inputs[0]}" -o out/plot.png -c efficientat-mn04 --reference auto --duration 10
echo "predictions: out/predictions-yamnet, out/predictions-efficientat-mn04 (Parquet datasets); plot: out/plot.png"
