"""CFRG factory side: model, defect synthesis, training, evaluation, export. Needs torch."""
try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "the 'export' package needs PyTorch: pip install 'cfrg-inspect[train]' "
        "(or: pip install torch==2.13.0)"
    ) from exc
