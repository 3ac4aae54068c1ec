#!/usr/bin/env bash
# TensorRT engines for a Jetson Orin from model.onnx: FP16 on the GPU, and INT8 on DLA core 0 with GPU
# fallback, after checking JetPack and TensorRT. Prints each build's plan and its equivalent trtexec line.
#
#   examples/jetson/build_engine.sh model.onnx [CALIB_DIR]     (CALIB_DIR: good images for INT8; default: the
#                                                               images held back at training, if the run is here)
set -euo pipefail
onnx=${1:?usage: build_engine.sh model.onnx [CALIB_DIR]}
calib=${2:-}
stem=${onnx%.onnx}

if [ -f /etc/nv_tegra_release ]; then
  echo "JetPack / L4T: $(head -n 1 /etc/nv_tegra_release)"
else
  echo "warning: /etc/nv_tegra_release not found: this is not a Jetson; DLA builds need an Orin" >&2
fi
if trt=$(python3 -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null); then
  echo "TensorRT: $trt"
  case "$trt" in
    10.*|11.*) ;;
    *) echo "error: TensorRT $trt is too old: JetPack 6 (TensorRT 10.3) or later is needed" >&2; exit 1 ;;
  esac
else
  echo "TensorRT: not importable here: cfrg build writes the precision graphs and says so (exit code 8)" >&2
fi

calib_flag=()
[ -n "$calib" ] && calib_flag=(--calib="$calib")
status=0
cfrg build --onnx="$onnx" --fp16 --saveEngine="$stem.fp16.engine" --maxShapes=frames:4x$(python3 -c \
  "import json,sys; d=json.load(open('${stem}.json'))['input']; print(f\"{d['height']}x{d['width']}\")")x3 \
  || status=$?
cfrg build --onnx="$onnx" --int8 "${calib_flag[@]}" --useDLACore=0 --allowGPUFallback \
  --saveEngine="$stem.dla0-int8.engine" || status=$?
exit $status
