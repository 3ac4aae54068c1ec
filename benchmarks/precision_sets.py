"""Each precision graph against FP32 on several development sets: the four metrics on the full test split and
cfrg build's own check (sdk.build.precision_check, on held-back good images and synthetic defects only).

    python benchmarks/precision_sets.py --data ../shared/data --runs runs/prec/ball_screw,runs/prec/tire,... \
        [--json runs/prec/precision_sets.json]

Each run folder holds a trained model.pt and config.json (cfrg train); the script exports it (model.onnx),
writes the FP16, TensorRT INT8 and CPU INT8 graphs with --accept-drop (so that every graph is measured, and
its check recorded), evaluates all four and prints one markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdk.cli import main  # noqa: E402

GRAPHS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx", "cpu-int8": "model.cpu-int8.onnx"}
KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
FLAGS = {"fp16": ["--fp16"], "int8": ["--int8"], "cpu-int8": ["--cpuInt8"]}


def run_set(run: Path, data: str) -> dict:
    from sdk.run_record import RunRecord

    category = RunRecord.read(run, data).category
    onnx_path = run / "model.onnx"
    if not onnx_path.is_file():
        assert main(["export", str(run / "model.pt"), "-o", str(onnx_path), "--data", data, "--no-progress"]) == 0
    for precision, flags in FLAGS.items():
        if not (run / GRAPHS[precision]).is_file():
            code = main(["build", "--onnx", str(onnx_path), *flags, "--accept-drop", "--no-progress"])
            assert code in (0, 8), f"{run}: cfrg build {flags} exit {code}"
    rows = {}
    for precision, name in GRAPHS.items():
        out = run / f"eval_{precision}.json"
        if not out.is_file():
            assert main(["eval", "--model", str(run / name), "--data", data, "--category", category, "--json", str(out),
                         "--no-progress"]) == 0
        metrics = json.loads(out.read_text())
        side = json.loads((run / name).with_suffix(".json").read_text())
        rows[precision] = {"metrics": {k: metrics[k] for k in KEYS}, "check": side.get("precision_check")}
    return {"category": category, "rows": rows}


def passes(recorded: dict) -> bool:
    """The recorded figures judged by today's limits (sdk.build.precision_check.LIMITS)."""
    from dataclasses import fields

    from sdk.build.precision_check import LIMITS, PrecisionCheck

    names = {f.name for f in fields(PrecisionCheck)} - {"limits", "accepted_drop"}
    return PrecisionCheck(**{k: recorded[k] for k in names}, limits=dict(LIMITS)).passed


def table(results: list[dict]) -> str:
    lines = ["| set | graph | I-AUROC / P-AUROC / AUPRO / AP | minus FP32 | check: rank corr., AUROC drop, verdicts "
             "changed, passed |", "| --- | --- | --- | --- | --- |"]
    worst = {p: [float("inf")] * 4 for p in FLAGS}
    means = {p: [0.0] * 4 for p in FLAGS}
    for r in results:
        base = r["rows"]["fp32"]["metrics"]
        for precision, row in r["rows"].items():
            m = row["metrics"]
            values = " / ".join(f"{100 * m[k]:.2f}" for k in KEYS)
            if precision == "fp32":
                lines.append(f"| {r['category']} | fp32 | {values} | | |")
                continue
            diff = [100 * (m[k] - base[k]) for k in KEYS]
            for i, d in enumerate(diff):
                worst[precision][i] = min(worst[precision][i], d)
                means[precision][i] += d / len(results)
            c = row["check"] or {}
            total = c.get("n_good", 0) + c.get("n_synthetic", 0)
            changed = round((1 - c.get("verdict_agreement", 1)) * total)
            check = (f"{c['score_rank_correlation']:.4f}, {100 * c['auroc_drop']:+.2f}, {changed}/{total}, "
                     f"{'yes' if passes(c) else 'NO'}") if c else "not checked"
            lines.append(f"| {r['category']} | {precision} | {values} | {' / '.join(f'{d:+.2f}' for d in diff)} | "
                         f"{check} |")
    for precision in FLAGS:
        lines.append(f"| mean | {precision} | | {' / '.join(f'{d:+.2f}' for d in means[precision])} | |")
        lines.append(f"| worst | {precision} | | {' / '.join(f'{d:+.2f}' for d in worst[precision])} | |")
    return "\n".join(lines)


def cli(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--runs", required=True, help="comma-separated run folders")
    p.add_argument("--json", help="write the figures here")
    ns = p.parse_args(argv)
    results = [run_set(Path(r), ns.data) for r in ns.runs.split(",")]
    print(table(results))
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
