"""Could a category's pixel map be chosen from its good images alone? Draw synthetic defects (the training
synthesiser) on each run's held-back good images and rank the pixel maps (export.config.PIXEL_MAPS) by pixel
AUROC, AUPRO and pixel AP on them; set that ranking beside the real test split's (quality.py eval tags
named after the maps). docs/quality.md holds the result: the synthetic ranking does not follow the real one.

    python benchmarks/pixel_map_synthetic.py --runs runs/quality/default30 [--categories a,b] [--maps a,b] [--out F]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from export.config import PIXEL_MAPS  # noqa: E402
from sdk.synthesis import DefectSynthesizer  # noqa: E402
from export.checkpoint import load_model  # noqa: E402
from export.fitting import run_images, with_map_fusion  # noqa: E402
from export.predictor import torch_predictor  # noqa: E402
from sdk import metrics  # noqa: E402

SYNTHETIC_IMAGES = 96  # drawn on the held-back good images in turn


def draw_synthetic_set(holdout: np.ndarray, donors: np.ndarray, seed: int,
                       count: int = SYNTHETIC_IMAGES) -> tuple[np.ndarray, list[np.ndarray]]:
    """The held-back good images (empty masks) followed by `count` synthetic defects drawn on them in turn."""
    synth = DefectSynthesizer(donor_images=list(donors), seed=seed)
    rng = np.random.default_rng([seed, 0x91C5])
    images, masks = list(holdout), [np.zeros(holdout.shape[1:3], bool)] * len(holdout)
    for k in range(max(count, len(holdout))):
        out, mask, _ = synth(holdout[k % len(holdout)], rng)
        images.append(out)
        masks.append(mask > 0.5)
    return np.stack(images), masks


def pixel_metrics(masks, maps) -> list[float]:
    return [100 * float(f(masks, maps)) for f in (metrics.pixel_auroc, metrics.aupro, metrics.pixel_ap)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="a quality.py runs folder (RUNS/<set>/model.pt)")
    p.add_argument("--data", help="the data root, if it moved since training")
    p.add_argument("--categories", help="comma-separated (default: every run under --runs)")
    p.add_argument("--maps", default=",".join(PIXEL_MAPS), help="comma-separated pixel maps (plain_fused rebuilds "
                   "the memory: the slowest)")
    p.add_argument("--out", help="write the table here too")
    args = p.parse_args()
    torch.set_num_threads(1)
    runs = Path(args.runs)
    cats = args.categories.split(",") if args.categories else sorted(d.parent.name for d in runs.glob("*/model.pt"))
    lines = ["| set | map | synthetic P-AUROC / AUPRO / AP (mean) | real P-AUROC / AUPRO / AP (mean) |",
             "| --- | --- | --- | --- |"]
    for cat in cats:
        trained = load_model(runs / cat / "model.pt")
        images, holdout, seed = run_images(runs / cat, args.data, trained.config.image_size, False)
        if holdout is None:
            print(f"{cat}: no held-back good images, skipped", flush=True)
            continue
        x, masks = draw_synthetic_set(holdout, images, seed)
        for kind in args.maps.split(","):
            model = with_map_fusion(trained, runs / cat, pixel_map=kind, data=args.data, progress=False)
            maps, _ = torch_predictor(model)(x)
            synthetic = pixel_metrics(masks, list(maps))
            real_file = runs / cat / f"eval_{kind}.json"
            if kind == trained.config.pixel_map and not real_file.is_file():
                real_file = runs / cat / "eval_default.json"
            real = ([100 * json.loads(real_file.read_text())[k] for k in ("pixel_auroc", "aupro", "pixel_ap")]
                    if real_file.is_file() else None)
            row = (f"| {cat} | {kind} | " + " / ".join(f"{v:.1f}" for v in synthetic) + f" ({np.mean(synthetic):.1f}) | "
                   + (" / ".join(f"{v:.1f}" for v in real) + f" ({np.mean(real):.1f})" if real else "not evaluated")
                   + " |")
            lines.append(row)
            print(row, flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
