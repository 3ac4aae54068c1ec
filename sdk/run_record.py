"""A training run's record (OUT/config.json): the one schema that training writes and the re-fusion, the export and
the engine builder read, with the run's held-back good images. Plain data: no torch."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sdk.backends import ModelFileError
from sdk.files import write_json


@dataclass(frozen=True)
class RunRecord:
    """What a training run's config.json says about its data, validated, with paths kept inside the data root.

    config.json: {"model": the CFRGConfig, "train": the TrainArgs, "data_fingerprint", "n_train_images", "holdout":
    the held-back good images relative to the data root, "versions", "summary", and "metrics" when evaluated}."""

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
                                    f"--good-dir DIR with good images)")
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
                                     f"record was edited or damaged: train again, or pass --good-dir DIR")
            files.append(p)
        return dataclasses.replace(record, data=root, holdout_files=tuple(files))

    @staticmethod
    def write(run_dir: str | os.PathLike, *, model: dict, train: dict, data_fingerprint: str, n_train_images: int,
              holdout_files: Sequence[str | os.PathLike], versions: dict, summary: dict,
              metrics: dict | None = None) -> dict:
        """Write RUN/config.json; `holdout_files` are paths under train["data"], recorded relative to it. Returns
        what was written."""
        record = {"model": model, "train": train, "data_fingerprint": data_fingerprint,
                  "n_train_images": n_train_images,
                  "holdout": [os.path.relpath(p, train["data"]) for p in holdout_files],
                  "versions": versions, "summary": summary, **({"metrics": metrics} if metrics is not None else {})}
        write_json(Path(run_dir) / "config.json", record)
        return record

    def split(self, files: Sequence[str | os.PathLike]) -> tuple[list[int], list[int]]:
        """(the training images, the held-back ones) among the run's good training images `files`, by index in
        `files`: the held-back ones are those the record lists, in its order."""
        index = {os.path.normpath(os.path.abspath(f)): i for i, f in enumerate(files)}
        held = []
        for p in self.holdout_files:
            if os.path.normpath(p) not in index:
                raise ModelFileError(f"{self.path}: held-back image {p} is not among the {len(files)} good training "
                                     f"images under {self.data}; pass --data with the run's data set")
            held.append(index[os.path.normpath(p)])
        kept = set(held)
        return [i for i in range(len(files)) if i not in kept], held

    def held_back_files(self) -> list[str]:
        """The held-back good images, every one present; a refusal saying what to pass instead when the run held
        none back or some are missing."""
        if not self.holdout_files:
            raise ValueError(f"{self.path}: the model was trained with --holdout 0; pass --good-dir DIR with good "
                             f"images")
        absent = [p for p in self.holdout_files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"held-back good image {absent[0]} is missing ({len(absent)} in all): pass --data "
                                    f"ROOT where the training data lives, or --good-dir DIR")
        return [str(p) for p in self.holdout_files]
