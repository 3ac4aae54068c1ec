"""A trained run with other map or score options (the `cfrg eval` ones), saved as a run `cfrg export` takes:
the same weights, the statistics and memory rebuilt from the run's own good images (export.fitting.with_map_fusion).
Used to export and time a candidate default without retraining.

    python benchmarks/refit.py RUN OUT [EVAL FLAGS, e.g. --map-normalisation sum]
    cfrg export OUT/model.pt -o OUT/model.onnx
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from export.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from export.options import EVAL_OPTIONS, add_eval_options  # noqa: E402
from export.fitting import with_map_fusion  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a training run folder (model.pt, config.json)")
    p.add_argument("out", help="new run folder")
    p.add_argument("--data", help="the data root, if it moved since training")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_eval_options(p)
    args = p.parse_args()
    run, out = Path(args.run), Path(args.out)
    changes = {k: getattr(args, k) for k in EVAL_OPTIONS if getattr(args, k) is not None}
    if not changes:
        p.error("give at least one option to change (see --help)")
    trained, extra = load_checkpoint(run / "model.pt")
    model = with_map_fusion(trained, run, data=args.data, progress=args.progress, **changes)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "config.json", out / "config.json")  # the data and held-back images `cfrg export` reads
    save_checkpoint(model, out / "model.pt", extra={**extra, "refit": changes})
    print(f"wrote {out / 'model.pt'} ({', '.join(f'{k}={v}' for k, v in changes.items())})")


if __name__ == "__main__":
    main()
