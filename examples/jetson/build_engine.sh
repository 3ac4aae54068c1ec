#!/usr/bin/env bash
# TensorRT engines for a Jetson Orin from model.onnx: FP16 on the GPU (strongly typed, batches 1 to 4), and INT8
# on DLA core 0 with GPU fallback (DLA: TensorRT 10.3 of JetPack 6, static batch 1, INT8 from the ranges of the
# Q/DQ graph), after checking JetPack and TensorRT. Prints each build's plan, the rule check and its trtexec line.
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
dla=yes
target=()  # the rules of the installed TensorRT; where none is installed, JetPack 6's 10.3
if trt=$(python3 -c "import tensorrt; print(tensorrt.__version__)" 2>/dev/null); then
  echo "TensorRT: $trt"
  case "$trt" in
    10.[0-7].*|10.[0-7]) ;;
    10.*) dla=no; echo "TensorRT $trt has no DLA (10.7 was the last 10.x with it): building for the GPU only" >&2 ;;
    11.*) dla=no; echo "TensorRT $trt builds no DLA engines on JetPack 6 (use its TensorRT 10.3): GPU only" >&2 ;;
    *) echo "error: TensorRT $trt is too old: JetPack 6 (TensorRT 10.3) or later is needed" >&2; exit 1 ;;
  esac
else
  echo "TensorRT: not importable here: cfrg build writes the precision graphs and says so (exit code 8)" >&2
  target=(--tensorrt 10.3)
fi

size=$(python3 -c "import json; d=json.load(open('${stem}.json'))['input']; print(f\"{d['height']}x{d['width']}\")")
calib_flag=()
[ -n "$calib" ] && calib_flag=(--calib="$calib")
status=0
cfrg build --onnx="$onnx" --fp16 --saveEngine="$stem.fp16-gpu.engine" --maxShapes="frames:4x${size}x3" \
  "${target[@]}" || status=$?
if [ "$dla" = yes ]; then
  cfrg build --onnx="$onnx" --int8 "${calib_flag[@]}" --useDLACore=0 --allowGPUFallback \
    --minShapes="frames:1x${size}x3" --maxShapes="frames:1x${size}x3" "${target[@]}" \
    --saveEngine="$stem.int8-dla0.engine" || status=$?
fi
exit $status
