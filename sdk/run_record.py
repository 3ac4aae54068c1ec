"""A training run's record (OUT/config.json) as the export and the engine builder read it. Plain data: no torch."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sdk.backends import ModelFileError


@dataclass(frozen=True)
class RunRecord:
    """What a training run's config.json says about its data, validated, with paths kept inside the data root."""

    path: Path  # the config.json
    data: Path  # the data root: the one given, else the one recorded
    category: str
    holdout_fraction: float
    seed: int
    holdout_files: tuple[Path, ...]  # the held-back good images, inside `data`
    data_fingerprint: str | None
    raw: dict

    @classmethod
    def read(cls, run_dir: str | os.PathLike, data: str | os.PathLike | None = None) -> "RunRecord":
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: it names the run's data and held-back good images; keep the "
                                    f"config.json that `cfrg train` wrote beside model.pt (or, to export, pass "
                                    f"--calib-dir DIR with good images)")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
            train = cfg["train"]
            record = cls(path=path, data=Path(data or train["data"]), category=train["category"],
                         holdout_fraction=float(train.get("holdout", 0.1)), seed=int(train.get("seed", 0)),
                         holdout_files=(), data_fingerprint=cfg.get("data_fingerprint"), raw=cfg)
            relative = cfg.get("holdout", [])
            if not isinstance(record.category, str) or not isinstance(relative, list) or not (
                    record.data_fingerprint is None or isinstance(record.data_fingerprint, str)):
                raise TypeError("'train.category', 'holdout' or 'data_fingerprint' has the wrong type")
            if not 0.0 <= record.holdout_fraction < 1.0:
                raise ValueError(f"'train.holdout' is {record.holdout_fraction}, outside [0, 1)")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(f"{path} is not a valid run record ({type(exc).__name__}: {exc}); train again, "
                                 f"or restore the config.json that `cfrg train` wrote") from None
        root = Path(os.path.abspath(record.data))
        files = []
        for rel in relative:  # lexically: "..", absolute paths and other roots are refused, links inside are fine
            p = Path(os.path.normpath(root / str(rel)))
            if not isinstance(rel, str) or Path(rel).is_absolute() or not p.is_relative_to(root):
                raise ModelFileError(f"{path}: held-back image {rel!r} lies outside the data root {root}; the "
                                     f"record was edited or damaged: train again, or pass --calib-dir DIR")
            files.append(p)
        return dataclasses.replace(record, data=root, holdout_files=tuple(files))
