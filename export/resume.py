"""OUT/last.pt: the training state saved every minute and at a stop, and `cfrg train --resume` from it."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sdk.files import atomic_output

from .config import CFRGConfig
from .map_options import MAP_OPTIONS
from .model import CFRG
from .options import TrainArgs

# what last.pt leaves out: the frozen teacher, and the fine branch, refitted at the end ("auto" may add or drop it)
NOT_TRAINING_STATE = ("teacher.", "fine.")


def _resume_key(config: CFRGConfig, args: TrainArgs) -> dict:
    """What a resumed run must share with the first: the model and the images it trains on."""
    return {**{f"model.{k}": v for k, v in config.to_dict().items()}, "category": args.category,
            "holdout": args.holdout, "augment": args.augment, "ema": args.ema}


# keys that runs saved before them did not record: what they meant then
_RESUME_KEY_DEFAULTS = {"augment": "none", "ema": 0.0, **{f"model.{k}": o.legacy for k, o in MAP_OPTIONS.items()}}


def save_state(last: Path, model: CFRG, opt: torch.optim.Optimizer, step: int, elapsed: float, history: list,
               config: CFRGConfig, args: TrainArgs, average=None) -> None:
    """OUT/last.pt: what --resume needs to continue from `step` (the weight average too, with --ema)."""
    with atomic_output(last) as tmp:
        torch.save({"model": {k: v for k, v in model.state_dict().items() if not k.startswith(NOT_TRAINING_STATE)},
                    "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "history": json.dumps(history), "run": json.dumps(_resume_key(config, args)),
                    **({"average": average.state_dict()} if average is not None else {})}, tmp)


def _check_resume(state: dict, last: Path, config: CFRGConfig, args: TrainArgs) -> None:
    if "run" not in state:  # last.pt from before this record existed: the state-dict check still applies
        return
    saved, now = json.loads(state["run"]), _resume_key(config, args)
    saved = {**_RESUME_KEY_DEFAULTS, **saved}
    diff = [f"{k}: {saved.get(k)} then, {now[k]} now" for k in now if saved.get(k) != now[k]]
    if diff:
        raise ValueError(f"--resume: {last} comes from a different run ({'; '.join(diff)}); "
                         f"resume with the first run's options or use a new --out")


def resume_state(last: Path, model: CFRG, opt: torch.optim.Optimizer, config: CFRGConfig,
                 args: TrainArgs, average=None) -> tuple[int, float, list]:
    """Load OUT/last.pt into the model, the optimiser and the weight average (train.WeightAverage); returns (step, seconds trained,
    evaluation history)."""
    if not last.is_file():
        raise FileNotFoundError(f"--resume: {last} does not exist; train without --resume first")
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"--resume: {last} is not readable ({type(exc).__name__}: {exc}); "
                         f"delete it and train without --resume") from exc
    _check_resume(state, last, config, args)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    missing = [k for k in missing if not k.startswith(NOT_TRAINING_STATE)]
    if missing or unexpected:
        raise ValueError(f"--resume: {last} holds another architecture (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); resume with the options of the first run, or use a new --out")
    opt.load_state_dict(state["optimizer"])
    if average is not None:
        average.load_state_dict(state["average"])  # --ema is in the resume key, so last.pt has one
    print(f"resumed from {last} at step {state['step']}, {state['elapsed'] / 60:.1f} min trained")
    return state["step"], state["elapsed"], json.loads(state["history"])
