"""model.pt: the checkpoint written at the end of training and read by eval, export and the re-fusion."""
from __future__ import annotations

import os

import torch

from sdk.backends import ModelFileError
from sdk.files import atomic_output

from .config import CFRGConfig
from .model import CFRG


def save_checkpoint(model: CFRG, path, extra: dict | None = None) -> None:
    """model.pt: plain tensors and JSON-able values only (loads with weights_only=True)."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}
    payload = {"format": "cfrg-checkpoint-1", "config": model.config.to_dict(), "state_dict": state,
               "teacher_state_dict": model.teacher.state_dict(), "extra": extra or {}}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, map_location="cpu") -> tuple[CFRG, dict]:
    """The model in a model.pt; ModelFileError (one line: the file, the problem, the fix) for a bad one."""
    if os.path.isdir(path):
        raise ModelFileError(f"checkpoint {path} is a folder: pass the model.pt inside it "
                             f"({os.path.join(path, 'model.pt')})")
    if not os.path.isfile(path):
        raise ModelFileError(f"checkpoint {path} does not exist: train one with `cfrg train ... --out DIR` "
                             f"and pass DIR/model.pt")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ModelFileError(f"{path} is not a readable CFRG checkpoint ({type(exc).__name__}: {exc}); "
                             f"train again or copy the file again") from exc
    if not isinstance(payload, dict) or payload.get("format") != "cfrg-checkpoint-1":
        raise ModelFileError(f"{path} is not a CFRG checkpoint (no 'cfrg-checkpoint-1' format tag); pass the "
                             f"model.pt that `cfrg train` wrote")
    missing_keys = [k for k in ("config", "state_dict", "teacher_state_dict") if k not in payload]
    if missing_keys:
        raise ModelFileError(f"{path}: the checkpoint lacks {missing_keys}; it is incomplete, train again")
    try:
        model = CFRG(CFRGConfig.from_dict(payload["config"]), pretrained_teacher=False)
        model.teacher.load_state_dict(payload["teacher_state_dict"])
        missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: the checkpoint's config does not match its weights "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); train again") from exc
    missing = [k for k in missing if not k.startswith("teacher.")]
    if missing or unexpected:
        raise ModelFileError(f"{path}: checkpoint does not match its config (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}); train again")
    model.eval()
    return model, payload.get("extra", {}) if isinstance(payload.get("extra"), dict) else {}


def load_model(path) -> CFRG:
    model, _ = load_checkpoint(path)
    return model.to(memory_format=torch.channels_last)
