"""CFRG factory side: the model, its training and statistics, the ONNX export. Needs PyTorch
(pip install 'cfrg-inspect[train]'), except config and options, the model's and the training's
declarations as plain data for the CLI. What `cfrg build` runs on a Jetson is in sdk.build.
"""
