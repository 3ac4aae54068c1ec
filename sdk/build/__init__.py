"""`cfrg build` without the factory: the precision graphs (FP16, TensorRT INT8, CPU INT8) and their check
against FP32, thresholds measured with a graph, TensorRT's documented rules and the engine builder.

Needs onnx and onnxruntime for the graphs, tensorrt only for engines; never torch, so a Jetson runs it
with the field runtime alone (pip install 'cfrg-inspect[build]'). Its modules, in the order a build uses them:

    command          `cfrg build` as one call: checks, calibration images, graph freshness, engine check and staging
    options          trtexec's options (BuildOptions), their refusals and parsers, the TensorRT line of a version
    precision        the precision graphs from the FP32 export, and the check of a graph or engine against FP32
    precision_check  what that check measures (good images and synthetic defects) and its limits
    thresholds       thresholds and score normalisation measured with a graph (also used by cfrg export)
    onnx_utils       constant folding, the TensorRT-parser report, saving a graph with its description
    tensorrt_rules   TensorRT's documented rules (tensorrt_rules.json), checked on a graph without TensorRT
    plan             the plan and the trtexec line per TensorRT target, and the rule check of the graph to parse
    dla              DLA's layer-precision spec and INT8 ranges (TensorRT calibration cache files)
    engine           the engine itself with TensorRT (TensorRTBuilder) and its model.json description
"""
