"""`cfrg build` without the factory: the precision graphs (FP16, TensorRT INT8, CPU INT8) and their check
against FP32, thresholds measured with a graph, TensorRT's documented rules and the engine builder.

Needs onnx and onnxruntime for the graphs, tensorrt only for engines; never torch, so a Jetson runs it
with the field runtime alone (pip install 'cfrg-inspect[build]').
"""
