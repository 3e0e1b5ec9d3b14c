#!/usr/bin/env bash
# The main job, end to end on a fresh machine:
#   0. install the few Debian packages the build needs when they are missing (python3-venv,
#      python3-dev, g++), as root or through sudo;
#   1. set up .venv (tools/setup.sh: seconds when nothing changed);
#   2. once: convert the two teacher classifiers from ../shared/models (YAMNet from the
#      per-channel int8 tflite, EfficientAT mn04) and register them in the model registry
#      ($SPECTRAL_TRANSCODER_HOME, default ~/.cache/spectral_transcoder: the same place the
#      Python API and the CLI look, so `st.classify(..., classifier="yamnet")` works afterwards);
#   3. classify the reference recordings through the transcoders shipped in the package:
#      audio -> third-octave levels -> transcoder -> classifier -> Parquet predictions
#      (out/predictions-yamnet, out/predictions-efficientat-mn04) and a plot of the first input (out/plot.png).
# Pass other audio files or third-octave archives as arguments to classify those instead.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=(python3-venv)
[ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing+=(python3-dev)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -q && apt-get install -y -q "${missing[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -q && sudo apt-get install -y -q "${missing[@]}"
  else
    echo "run.sh: missing Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
bash tools/setup.sh
SHARED=${ST_SHARED_DIR:-../shared}
REGISTRY=$(.venv/bin/python -c "from spectral_transcoder.registry import home; print(home())")
ST=.venv/bin/spectral-transcoder
M=$SHARED/models
mkdir -p out/models

register() {  # NAME CONVERT-ARGS...: convert a classifier once and import it into the registry
  local name=$1
  shift
  if [ ! -f "$REGISTRY/classifier/$name.onnx" ]; then
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
echo "registry: $REGISTRY (classifiers yamnet, efficientat-mn04)"
echo "predictions: out/predictions-yamnet, out/predictions-efficientat-mn04 (Parquet datasets); plot: out/plot.png"
