"""CFRG factory side: the model, its training and statistics, the ONNX export. Needs PyTorch
(pip install 'cfrg-inspect[train]'), except config, map_options and options, the model's and the training's
declarations as plain data for the CLI. What `cfrg build` runs on a Jetson is in sdk.build.

- config: CFRGConfig, the model's configuration; map_options: the ten map and score options, declared once;
  options: TrainArgs, the training options and their flags
- blocks: the student, recovery and segmentation parts and the map operations; memory: PatchMemory;
  gaussians: GlobalGaussian and FineGaussian; backbones: the teachers; model: CFRG itself
- train: the training loop; batches: synthetic batches and the losses; train_images: the held-back split and the
  training images; resume: last.pt and --resume
- fitting: the statistics fitted on good images, and the re-fusion with other map options (with_map_fusion)
- checkpoint: model.pt; predictor: the PyTorch model at inference (BatchNorm folded); onnx_export: the ONNX graph
"""
