#!/usr/bin/env python3
"""Inspect a folder of images and write a report that opens offline: report.html (summary, score histogram
with the threshold, one row per image with its overlay, verdict and regions) and report.csv.

    python examples/folder_inspect.py --model model.onnx --input images/ --out report/
        [--threshold default|good_only|f1|VALUE] [--min-area PX] [--tile]

Works with model.onnx or model.engine alike. Needs only `import sdk` (numpy, opencv, onnxruntime).
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import sys
from pathlib import Path

import cv2
import numpy as np

import sdk
from sdk.checks import threshold_arg
from sdk.files import atomic_write, image_files, write_png
from sdk.sinks import overlay

THUMB_WIDTH = 320


def inspect(det: sdk.Detector, folder: Path, out: Path) -> list[dict]:
    """One row per image: file, status, verdict, score, normalised score, regions, overlay thumbnail."""
    rows = []
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    with sdk.Stream(det, sdk.open_source(str(folder))) as stream:
        for rec in stream:
            name = Path(rec.frame.meta.get("path", f"frame_{rec.frame_id}")).name if rec.frame else f"#{rec.frame_id}"
            row = {"file": name, "status": rec.status, "verdict": rec.verdict or "error", "score": "",
                   "normalized_score": "", "regions": [], "error": rec.error or "", "thumb": ""}
            if rec.status == "ok":
                r = rec.result
                row.update(score=f"{r.score:.4f}", normalized_score=f"{r.normalised_score:.3f}",
                           regions=[(*g.box, g.area, round(g.max_score, 3)) for g in r.regions])
                picture = overlay(rec.image, r.anomaly_map, r.mask, label=f"{r.verdict} {r.score:.3f}",
                                  defect=r.verdict != "ok")
                scale = THUMB_WIDTH / picture.shape[1]
                thumb = cv2.resize(picture, (THUMB_WIDTH, max(1, round(picture.shape[0] * scale))),
                                   interpolation=cv2.INTER_AREA)
                row["thumb"] = f"overlays/{Path(name).stem}.png"
                write_png(out / row["thumb"], thumb)
            rows.append(row)
    return rows


def histogram_svg(scores: list[float], verdicts: list[str], threshold: float, bins: int = 30) -> str:
    """An inline SVG histogram of the scores (ok and defect stacked) with the threshold as a red line."""
    if not scores:
        return "<p>no scores</p>"
    lo, hi = min(scores + [threshold]), max(scores + [threshold])
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = {v: np.histogram([s for s, w in zip(scores, verdicts) if w == v], edges)[0] for v in ("ok", "defect")}
    top = max(1, int((counts["ok"] + counts["defect"]).max()))
    width, height, bar = 600, 160, 600 / bins
    parts = [f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}">']
    for i in range(bins):
        y = height
        for verdict, colour in (("ok", "#4caf50"), ("defect", "#e53935")):
            h = counts[verdict][i] / top * height
            y -= h
            if h:
                parts.append(f'<rect x="{i * bar:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                             f'fill="{colour}"/>')
    x = (threshold - lo) / (hi - lo) * width
    parts.append(f'<line id="threshold" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#b71c1c" '
                 f'stroke-width="2" stroke-dasharray="4"/>')
    parts.append(f'<text x="2" y="{height + 15}" font-size="11">{lo:.3g}</text>'
                 f'<text x="{width - 40}" y="{height + 15}" font-size="11">{hi:.3g}</text>'
                 f'<text x="{min(x + 4, width - 120):.1f}" y="12" font-size="11" fill="#b71c1c">'
                 f'threshold {threshold:.3g}</text></svg>')
    return "".join(parts)


def write_report(rows: list[dict], det: sdk.Detector, folder: Path, out: Path) -> None:
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("ok", "defect", "error")}
    scores = [float(r["score"]) for r in rows if r["score"]]
    verdicts = [r["verdict"] for r in rows if r["score"]]
    esc = html.escape
    body = []
    for r in rows:
        regions = "".join(f"<tr><td>{x}</td><td>{y}</td><td>{w}</td><td>{h}</td><td>{area}</td><td>{peak}</td></tr>"
                          for x, y, w, h, area, peak in r["regions"])
        table = (f'<table class="regions"><tr><th>x</th><th>y</th><th>w</th><th>h</th><th>area</th><th>max</th></tr>'
                 f"{regions}</table>" if r["regions"] else "")
        thumb = f'<img src="{esc(r["thumb"])}" alt="{esc(r["file"])}">' if r["thumb"] else esc(r["error"])
        body.append(f'<tr class="row {r["verdict"]}"><td>{thumb}</td><td>{esc(r["file"])}</td>'
                    f'<td class="verdict">{r["verdict"].upper()}</td><td>{r["score"]}</td>'
                    f'<td>{r["normalized_score"]}</td><td>{len(r["regions"])}{table}</td></tr>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Inspection report: {esc(folder.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
#summary span {{ margin-right: 2em; font-size: 1.2em; }}
table.report {{ border-collapse: collapse; }} table.report td, table.report th {{ border-bottom: 1px solid #ddd;
padding: 4px 8px; vertical-align: top; }}
tr.defect .verdict {{ color: #c62828; font-weight: bold; }} tr.ok .verdict {{ color: #2e7d32; }}
tr.error .verdict {{ color: #6a1b9a; }} table.regions {{ font-size: 0.8em; margin-top: 4px; }}
table.report td:nth-child(2) {{ max-width: 16em; word-break: break-all; }}
</style></head><body>
<h1>Inspection report</h1>
<p>Folder <code>{esc(str(folder))}</code>, model <code>{esc(str(det.path))}</code> ({esc(det.backend.name)},
{esc(det.info.precision)}), image threshold {det.image_threshold:.4g}, minimum region {det.min_area} px.</p>
<div id="summary"><span id="n-images">{len(rows)} images</span><span id="n-ok">{counts["ok"]} OK</span>
<span id="n-defect">{counts["defect"]} NG</span><span id="n-error">{counts["error"]} unreadable</span></div>
<h2>Scores</h2>{histogram_svg(scores, verdicts, det.image_threshold)}
<h2>Images</h2>
<table class="report" id="images"><tr><th>overlay</th><th>file</th><th>verdict</th><th>score</th>
<th>normalised</th><th>regions</th></tr>
{"".join(body)}
</table></body></html>
"""
    atomic_write(out / "report.html", page)
    lines = [["file", "status", "verdict", "score", "normalized_score", "regions", "error"]]
    lines += [[r["file"], r["status"], r["verdict"], r["score"], r["normalized_score"], len(r["regions"]), r["error"]]
              for r in rows]
    text = io.StringIO()
    csv.writer(text).writerows(lines)
    atomic_write(out / "report.csv", text.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model.onnx or model.engine")
    p.add_argument("--input", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="folder for report.html, report.csv and overlays/")
    p.add_argument("--threshold", type=threshold_arg, default="default", help="default, good_only, f1 or a score")
    p.add_argument("--min-area", type=int, default=0, help="smallest region in pixels")
    p.add_argument("--tile", action="store_true", help="tiled inference for images much larger than the model")
    args = p.parse_args(argv)
    folder, out = Path(args.input), Path(args.out)
    if not folder.is_dir() or not image_files(folder):
        print(f"folder_inspect: {folder} is not a folder of images", file=sys.stderr)
        return 3
    try:
        det = sdk.Detector(args.model, threshold=args.threshold, min_area=args.min_area, tiling=args.tile)
    except (ValueError, ImportError, OSError) as exc:
        print(f"folder_inspect: {exc}", file=sys.stderr)
        return 4
    rows = inspect(det, folder, out)
    write_report(rows, det, folder, out)
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("ok", "defect", "error")}
    print(f"{len(rows)} images: {counts['ok']} OK, {counts['defect']} NG, {counts['error']} errors")
    print(f"wrote {out / 'report.html'} and {out / 'report.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
