"""CFRG factory side: model, defect synthesis, training, calibration, ONNX export.

Its modules need PyTorch (pip install 'cfrg-inspect[train]'), except config and options, which hold
the model's and the training's declarations as plain data for the CLI, and what `cfrg build` uses on a
Jetson: engine, precision, tensorrt_rules and runs (numpy, onnx, onnxruntime only).
"""
