"""The model card: model_card.html beside model.json, one self-contained page that opens offline.

What the model was trained on (counts, image sizes, data fingerprint), the held-back good images' score histogram
with every threshold, the scores of synthetic defects drawn on those images (sdk.synthesis, seeded), example
overlays, the latency on the machine that wrote the card, the precision graphs' check against FP32 where
`cfrg build` wrote them beside the model, and the drift reference when model.json has one. `cfrg export` writes
it; `cfrg card --model model.onnx` writes it again (e.g. after `cfrg build`). numpy, OpenCV and ONNX Runtime only.
"""
from __future__ import annotations

import base64
import html
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .files import atomic_write

PRECISIONS_BESIDE = ("fp16", "int8", "cpu-int8")
EXAMPLES_PER_KIND = 3


@dataclass
class CardFigures:
    """What the card shows, measured on the machine that writes it."""
    good_scores: list[float]
    defect_scores: list[float]
    defect_kinds: list[str]
    examples: list[dict] = field(default_factory=list)  # {"title", "png" (base64), "score", "verdict"}
    latency_ms: dict = field(default_factory=dict)
    image_sizes: dict = field(default_factory=dict)  # "WxH" -> count, over the good images
    precisions: dict = field(default_factory=dict)  # name -> {"file", "check": precision_check or {}}


def card_path(model_path: str | os.PathLike) -> Path:
    """model_card.html beside model.onnx (NAME_card.html beside NAME.onnx)."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}_card.html")


def _png_base64(image: np.ndarray, max_side: int = 360) -> str:
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", image)
    return base64.b64encode(data.tobytes()).decode("ascii") if ok else ""


def measure(detector, good_files: Sequence[str | os.PathLike], *, defects_per_image: int = 1, seed: int = 0,
            latency_calls: int = 20, progress: Callable[[int], None] | None = None) -> CardFigures:
    """Score the good images and synthetic defects drawn on them; time the detector at batch 1 and 8."""
    from .sinks import overlay
    from .synthesis import DefectSynthesizer

    images, sizes = [], {}
    for f in good_files:
        image = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"{f}: not a readable image; the model card needs the held-back good images")
        images.append(image)
        key = f"{image.shape[1]}x{image.shape[0]}"
        sizes[key] = sizes.get(key, 0) + 1
    if not images:
        raise ValueError("the model card needs good images (the held-back ones of the run, or --good-dir)")
    rng = np.random.default_rng(seed)
    synth = DefectSynthesizer(donor_images=[cv2.cvtColor(i, cv2.COLOR_BGR2RGB) for i in images[:8]], seed=seed)
    good_results, defect_results, kinds, defect_images = [], [], [], []
    for k, image in enumerate(images):
        good_results.append(detector(image))
        for _ in range(defects_per_image):
            augmented, _, kind = synth(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), rng)
            bad = cv2.cvtColor(np.ascontiguousarray(augmented), cv2.COLOR_RGB2BGR)
            defect_results.append(detector(bad))
            kinds.append(kind)
            defect_images.append(bad)
        if progress:
            progress(k + 1)
    examples = []
    for title, pool, results in (("held-back good", images, good_results),
                                 ("synthetic defect", defect_images, defect_results)):
        order = np.argsort([r.score for r in results])[::-1][:EXAMPLES_PER_KIND]  # the highest scores first
        for i in order:
            r = results[i]
            picture = overlay(pool[i], r.anomaly_map, r.mask, label=f"{r.score:.3g}", defect=r.is_defect,
                              map_range=(0.0, 2.0 * detector.pixel_threshold))  # one colour scale for all
            examples.append({"title": f"{title}{' (' + kinds[i] + ')' if title != 'held-back good' else ''}",
                             "png": _png_base64(picture), "score": r.score, "verdict": r.verdict})
    return CardFigures(good_scores=[r.score for r in good_results], defect_scores=[r.score for r in defect_results],
                       defect_kinds=kinds, examples=examples, latency_ms=_latency(detector, images, latency_calls),
                       image_sizes=sizes)


def _latency(detector, images: list[np.ndarray], calls: int) -> dict:
    one = []
    for i in range(calls + 2):
        t0 = time.perf_counter()
        detector(images[i % len(images)])
        one.append(1e3 * (time.perf_counter() - t0))
    batch = [images[i % len(images)] for i in range(8)]
    eight = []
    for _ in range(max(2, calls // 4)):
        t0 = time.perf_counter()
        detector.batch(batch)
        eight.append(1e3 * (time.perf_counter() - t0) / 8)
    return {"batch1_median_ms": round(statistics.median(one[2:]), 2), "batch1_p95_ms": round(float(np.percentile(one[2:], 95)), 2),
            "batch8_ms_per_frame": round(statistics.median(eight), 2), "backend": detector.backend.name,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
            "frame": "the held-back images at their own size, pre- and post-processing included"}


def precisions_beside(model_path: Path) -> dict:
    """The precision graphs / engines of cfrg build beside the model and their check against FP32."""
    found = {}
    for name in PRECISIONS_BESIDE:
        side = model_path.with_name(f"{model_path.stem}.{name}.json")
        if side.is_file():
            try:
                found[name] = {"file": side.with_suffix(".onnx").name,
                               "check": json.loads(side.read_text(encoding="utf-8")).get("precision_check", {})}
            except (OSError, json.JSONDecodeError):
                found[name] = {"file": side.name, "check": {"error": "its model.json cannot be read"}}
    return found


# -- the page -------------------------------------------------------------------------------

def _histogram_svg(good: list[float], defect: list[float], thresholds: dict, bins: int = 40) -> str:
    values = np.asarray(good + defect, np.float64)
    marks = [t["image"] for t in thresholds.values()]
    lo, hi = float(min(values.min(), *marks)), float(max(values.max(), *marks))
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    g, _ = np.histogram(good, edges)
    d, _ = np.histogram(defect, edges) if defect else (np.zeros(bins, int), None)
    top = max(1, int(max(g.max(), d.max())))
    width, height, pad = 760, 220, 30
    x = lambda v: pad + (v - lo) / (hi - lo) * (width - 2 * pad)  # noqa: E731
    bar_w = (width - 2 * pad) / bins
    parts = [f'<svg id="score-histogram" width="{width}" height="{height + 40}">']
    for i in range(bins):
        for counts, colour, dx in ((g, "#2e7d32", 0.0), (d, "#c62828", bar_w / 2)):
            if counts[i]:
                h = counts[i] / top * height
                parts.append(f'<rect class="bar" x="{pad + i * bar_w + dx:.1f}" y="{height - h + 10:.1f}" '
                             f'width="{bar_w / 2:.1f}" height="{h:.1f}" fill="{colour}"/>')
    for k, (name, t) in enumerate(thresholds.items()):
        xt = x(t["image"])
        parts.append(f'<line class="threshold" x1="{xt:.1f}" y1="5" x2="{xt:.1f}" y2="{height + 10}" stroke="#1565c0" '
                     f'stroke-width="2" stroke-dasharray="5,3"/><text x="{xt + 4:.1f}" y="{18 + 14 * k}" '
                     f'font-size="12" fill="#1565c0">{html.escape(name)} {t["image"]:.4g}</text>')
    parts.append(f'<text x="{pad}" y="{height + 32}" font-size="12">{lo:.4g}</text><text x="{width - pad - 40}" '
                 f'y="{height + 32}" font-size="12">{hi:.4g}</text></svg>')
    return "".join(parts)


def _table(rows: list[tuple], head: tuple | None = None, table_id: str = "") -> str:
    esc = html.escape
    header = "<tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table{f" id={chr(34)}{table_id}{chr(34)}" if table_id else ""}>{header}{body}</table>'


def _detection(scores: list[float], threshold: float) -> str:
    return f"{sum(s >= threshold for s in scores)} of {len(scores)}" if scores else "none"


def _drift_table(reference: dict | None) -> str:
    """The drift reference's statistics: what the held-back good images looked like (sdk.drift)."""
    if not reference:
        return '<p id="drift-reference">This model.json has no drift reference (exported by an earlier release).</p>'
    levels = list(reference.get("quantile_levels", []))
    shown = [q for q in (0.05, 0.5, 0.95) if q in levels]
    rows = []
    for name, stat in reference.get("statistics", {}).items():
        quantiles = stat.get("quantiles", [])
        rows.append((name, stat.get("n", ""), f"{stat.get('mean', float('nan')):.4g}",
                     f"{stat.get('std', float('nan')):.3g}",
                     *(f"{quantiles[levels.index(q)]:.4g}" if len(quantiles) == len(levels) else "" for q in shown)))
    grid = reference.get("grid")
    note = (f"<p>Image statistics on a {grid[1]}x{grid[0]} grid of every frame; the drift watch (sdk.DriftMonitor, "
            f"in every Stream and cfrg run) compares the line's frames with these.</p>" if grid else "")
    return note + _table(rows, ("statistic", "n", "mean", "std", *(f"{round(100 * q)} %" for q in shown)),
                         "drift-reference")


def render(info, figures: CardFigures, model_name: str, run: dict | None = None) -> str:
    """The card's HTML for the model that `info` (sdk.ModelInfo) describes."""
    esc = html.escape
    d = info.to_dict()
    training, provenance = d.get("training", {}), d.get("provenance", {})
    thresholds = {name: t.to_dict() for name, t in info.thresholds.items()}
    trained = [("category", training.get("category", "?")),
               ("training images", (run or {}).get("n_train_images", "?")),
               ("held-back good images", len(figures.good_scores)),
               ("image sizes (held-back)", ", ".join(f"{k} ({v})" for k, v in sorted(figures.image_sizes.items()))),
               ("model input", f"{info.input.width}x{info.input.height}, {info.input.colour_order}"),
               ("training", f"{training.get('steps', '?')} steps, {training.get('train_minutes', 0):.1f} min, "
                            f"{training.get('samples_seen', '?')} samples"),
               ("data fingerprint", provenance.get("data_fingerprint") or "not recorded"),
               ("made from", f"{provenance.get('source_model', '?')} (sha256 {str(provenance.get('source_sha256'))[:16]}...)"),
               ("exported", provenance.get("created", "?")),
               ("software", ", ".join(f"{k} {v}" for k, v in sorted((provenance.get("versions") or {}).items())))]
    threshold_rows = [(name, f"{t['image']:.5g}", f"{t['pixel']:.5g}", name == info.default_threshold,
                       _detection(figures.good_scores, t["image"]), _detection(figures.defect_scores, t["image"]))
                      for name, t in thresholds.items()]
    kinds = sorted(set(figures.defect_kinds))
    default_image = info.thresholds[info.default_threshold].image
    kind_rows = [(k, sum(1 for x in figures.defect_kinds if x == k),
                  _detection([s for s, x in zip(figures.defect_scores, figures.defect_kinds) if x == k], default_image))
                 for k in kinds]
    lat = figures.latency_ms
    latency_rows = [("batch 1, median", f"{lat.get('batch1_median_ms', '?')} ms"),
                    ("batch 1, p95", f"{lat.get('batch1_p95_ms', '?')} ms"),
                    ("batch 8, per frame", f"{lat.get('batch8_ms_per_frame', '?')} ms"),
                    ("backend", lat.get("backend", "?")), ("machine", lat.get("machine", "?")),
                    ("frames", lat.get("frame", "?"))]
    precision_rows = []
    for name, entry in figures.precisions.items():
        check = entry.get("check") or {}
        if not check:
            precision_rows.append((name, entry.get("file", ""), "not checked", "", "", ""))
            continue
        verdict = "passed" if check.get("passed") else "FAILED" + (" (accepted)" if check.get("accepted_drop") else "")
        precision_rows.append((name, entry.get("file", ""), verdict,
                               f"{100 * check.get('auroc_drop', float('nan')):.2f} pt",
                               f"{100 * check.get('pixel_auroc_drop', float('nan')):.2f} pt",
                               f"{100 * check.get('verdict_agreement', float('nan')):.1f} %"))
    drift_html = _drift_table(d.get("drift_reference"))
    examples = "".join(f'<figure class="example"><img src="data:image/png;base64,{e["png"]}" alt="{esc(e["title"])}">'
                       f'<figcaption>{esc(e["title"])}: score {e["score"]:.4g}, {esc(e["verdict"].upper())}'
                       f'</figcaption></figure>' for e in figures.examples)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Model card: {esc(model_name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 62em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} td, th {{ border-bottom: 1px solid #ddd; padding: 3px 10px;
text-align: left; vertical-align: top; }} figure.example {{ display: inline-block; margin: 0 1em 1em 0; }}
figure.example img {{ max-width: 360px; border: 1px solid #ccc; }} .legend span {{ margin-right: 2em; }}
pre {{ background: #f6f6f6; padding: 0.6em; font-size: 0.8em; max-height: 24em; overflow: auto; }}
</style></head><body>
<h1>Model card: {esc(model_name)}</h1>
<p id="summary">CFRG anomaly detector for <b>{esc(str(training.get("category", "?")))}</b>, {esc(info.precision)},
trained on good images only. Default threshold <b>{esc(info.default_threshold)}</b> (image score
{default_image:.5g}): {_detection(figures.good_scores, default_image)} held-back good images and
{_detection(figures.defect_scores, default_image)} synthetic defects score at or above it.</p>
<h2>Trained on</h2>{_table(trained, table_id="training")}
<h2>Scores of the held-back good images and of synthetic defects</h2>
<p class="legend"><span style="color:#2e7d32">&#9632; held-back good ({len(figures.good_scores)})</span>
<span style="color:#c62828">&#9632; synthetic defects ({len(figures.defect_scores)}, drawn on those images)</span>
<span style="color:#1565c0">- - thresholds</span></p>
{_histogram_svg(figures.good_scores, figures.defect_scores, thresholds)}
{_table(threshold_rows, ("threshold", "image", "pixel", "default", "good at or above", "synthetic at or above"),
        "thresholds")}
<h3>Synthetic defects by kind (default threshold)</h3>
{_table(kind_rows, ("kind", "images", "detected"), "defect-kinds")}
<p>Synthetic defects are drawn by sdk.synthesis (seeded) on the held-back good images: they show the score scale,
not the detection rate on real defects, which only real defect images measure (cfrg eval).</p>
<h2>Examples</h2><div id="examples">{examples}</div>
<h2>Latency on the machine that wrote this card</h2>{_table(latency_rows, table_id="latency")}
<h2>Precision graphs</h2>
<p>cfrg build's check of each graph against FP32 on the held-back good images and synthetic defects.</p>
{_table(precision_rows, ("precision", "file", "check against FP32", "AUROC drop", "pixel AUROC drop",
                         "verdicts agreeing"), "precisions") if precision_rows
 else '<p id="precisions">No precision graph beside the model yet (cfrg build writes them; cfrg card adds them here).</p>'}
<h2>Drift reference</h2>{drift_html}
</body></html>
"""


def training_run(info):
    """The RunRecord of the run the model was exported from (model.json's training.run_dir): its held-back good
    images and counts."""
    from .run_record import RunRecord

    run_dir = (info.training or {}).get("run_dir")
    if not run_dir or not (Path(run_dir) / "config.json").is_file():
        raise FileNotFoundError(f"the training run of this model ({run_dir or 'not recorded'}) is not here to name its "
                                f"held-back good images: pass --good-dir DIR with good images")
    return RunRecord.read(run_dir)


def write_model_card(model_path: str | os.PathLike, good_files: Sequence[str | os.PathLike], *, out=None,
                     run: dict | None = None, progress: bool = False) -> Path:
    """NAME_card.html for the model at `model_path` (ONNX Runtime on this machine), from its held-back good images."""
    from .detector import Detector
    from .progress import progress_bar

    model_path = Path(model_path)
    with Detector(model_path) as detector:
        bar = progress_bar(desc="model card", unit="image", total=len(good_files), disable=not progress)
        try:
            figures = measure(detector, good_files, progress=lambda k: bar.update(1))
        finally:
            bar.close()
        figures.precisions = precisions_beside(model_path)
        page = render(detector.info, figures, model_path.name, run)
    target = Path(out) if out else card_path(model_path)
    atomic_write(target, page)
    return target
