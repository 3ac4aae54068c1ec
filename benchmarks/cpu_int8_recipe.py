"""The CPU INT8 recipe chosen across the development sets (docs/deployment.md, "The CPU INT8 recipe").

    python benchmarks/cpu_int8_recipe.py --data ../shared/data --runs runs/prec/ball_screw,runs/prec/tire,... \
        [--out runs/recipe] [--speed-run runs/prec/ball_screw]

Each run folder holds model.onnx and model.json (cfrg export) and config.json with its held-back good images
(cfrg train). For every variant of the CPU recipe (sdk.build.precision.Int8Recipe) and every run, the graph is
written from the run's FP32 graph, calibrated on its held-back good images (with --accept-drop, so that each
is measured and its check recorded) and evaluated on the full test split. Speed: each variant's graph of the
speed run against its FP32 graph in one `sdk.bench` run, batch 1 and 8.

The rule, fixed before the figures were read: a variant qualifies when no set loses more than BOUND points
on any of the four metrics; of those, the fastest at batch 1 is the recipe. Leave one set out: the rule
applied to the other sets, the pick judged on the one left out. No variant qualifying means the build does
not offer CPU INT8.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sdk.build.precision as P  # noqa: E402
from sdk.cli import main  # noqa: E402

KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
BOUND = 1.0  # points, on every set and metric
# Lite0's three feature taps (the residual adds the memory, the Gaussians, the discrepancies and the heads read)
TEACHER_TAPS = ("/model/teacher/_blocks.2/Add", "/model/teacher/_blocks.4/Add", "/model/teacher/_blocks.10/Add")
# the recipe before this screen (the whole teacher in uint8); the chosen one is RECIPES["cpu-int8"]
BASE = dataclasses.replace(P.RECIPES["cpu-int8"], teacher_float_to_first_tap=False)
VARIANTS = {
    "all_uint8": BASE,
    "teacher_fp32": dataclasses.replace(BASE, parts=P.HEADS),
    "teacher_fp32_no_headroom": dataclasses.replace(BASE, parts=P.HEADS, headroom=()),
    "teacher_fp32_per_tensor": dataclasses.replace(BASE, parts=P.HEADS, per_channel=False),
    "teacher_fp32_percentile": dataclasses.replace(BASE, parts=P.HEADS, method="percentile"),
    "teacher_fp32_entropy": dataclasses.replace(BASE, parts=P.HEADS, method="entropy"),
    "teacher_only": dataclasses.replace(BASE, parts=("/model/teacher/",), headroom=()),
    "convs_only": dataclasses.replace(BASE, op_types=("Conv", "Add", "Relu", "Clip")),
    "taps_fp32": dataclasses.replace(BASE, keep_float=TEACHER_TAPS),
    # where in the teacher the loss comes from: its stem, its layers up to the first tap (stride 4), the rest
    "teacher_stem_fp32": dataclasses.replace(BASE, keep_float=("/model/teacher/_conv_stem/", "/model/teacher/Clip",
                                                                 "/model/teacher/_blocks.0/")),
    "teacher_stem_conv_fp32": dataclasses.replace(BASE, keep_float=("/model/teacher/_conv_stem/",)),
    "teacher_to_tap1_fp32": dataclasses.replace(BASE, teacher_float_to_first_tap=True),  # chosen: the default
    "teacher_after_tap1_fp32": dataclasses.replace(BASE, keep_float=tuple(f"/model/teacher/_blocks.{i}/"
                                                                          for i in range(3, 11))),
    "teacher_percentile": dataclasses.replace(BASE, method="percentile"),
    "teacher_entropy": dataclasses.replace(BASE, method="entropy"),
}


def measure(run: Path, data: str, out: Path, names) -> dict:
    from sdk.run_record import RunRecord

    record = RunRecord.read(run, data)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    reference = out / "fp32.json"
    if not reference.is_file():
        assert main(["eval", "--model", str(run / "model.onnx"), "--data", data, "--category", record.category,
                     "--json", str(reference), "--no-progress"]) == 0
    rows["fp32"] = {"metrics": {k: json.loads(reference.read_text())[k] for k in KEYS}}
    for name in names:
        graph, result = out / f"{name}.cpu-int8.onnx", out / f"{name}.json"
        if not result.is_file():
            P.write_precision_graph(run / "model.onnx", "cpu-int8", graph, calib_files=list(record.holdout_files),
                                    accept_drop=True, warn=lambda text: None, recipe=VARIANTS[name])
            assert main(["eval", "--model", str(graph), "--data", data, "--category", record.category, "--json",
                         str(result), "--no-progress"]) == 0
        metrics = json.loads(result.read_text())
        check = json.loads(graph.with_suffix(".json").read_text())["precision_check"]
        rows[name] = {"metrics": {k: metrics[k] for k in KEYS}, "check": check}
        print(f"{record.category} {name}: " + " / ".join(f"{100 * metrics[k]:.2f}" for k in KEYS)
              + f"  rank {check['score_rank_correlation']:.4f} passed {check['passed']}", flush=True)
    return {"category": record.category, "rows": rows}


def deltas(result: dict, name: str) -> list[float]:
    fp32, row = result["rows"]["fp32"]["metrics"], result["rows"][name]["metrics"]
    return [100 * (row[k] - fp32[k]) for k in KEYS]


def speed(run: Path, out: Path, names) -> dict:
    from sdk.bench import bench

    paths = [run / "model.onnx", *(out / f"{name}.cpu-int8.onnx" for name in names)]
    speeds = {}
    for batch, iterations in ((1, 200), (8, 30)):
        results = bench(paths, batch=batch, iterations=iterations, progress=False)
        base = results[0]["median_ms"]
        speeds[batch] = {"fp32": base, **{n: r["median_ms"] for n, r in zip(names, results[1:])}}
    return speeds


def choose(results: list[dict], names, speeds: dict) -> str | None:
    ok = [n for n in names if min(min(deltas(r, n)) for r in results) >= -BOUND]
    return min(ok, key=lambda n: speeds[1][n]) if ok else None


def main_(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", required=True, help="comma-separated run folders")
    parser.add_argument("--out", default="runs/recipe")
    parser.add_argument("--speed-run", help="run whose graphs are timed (default: the first)")
    parser.add_argument("--variants", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--no-speed", action="store_true", help="accuracy only (graphs and figures are kept: a "
                        "second run without it only times them)")
    args = parser.parse_args(argv)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    runs = [Path(r) for r in args.runs.split(",")]
    out = Path(args.out)
    results = [measure(run, args.data, out / run.name, names) for run in runs]
    if args.no_speed:
        return 0
    speed_run = Path(args.speed_run) if args.speed_run else runs[0]
    speeds = speed(speed_run, out / speed_run.name, names)
    (out / "recipe.json").write_text(json.dumps({"results": results, "speeds": speeds}, indent=1))

    print(f"\n| variant | mean (I / P / PRO / AP) | worst set and metric | sets within {BOUND} | batch 1 | batch 8 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in names:
        d = [deltas(r, n) for r in results]
        mean = [sum(x[i] for x in d) / len(d) for i in range(len(KEYS))]
        worst = min((min(x), r["category"], KEYS[x.index(min(x))]) for x, r in zip(d, results))
        within = sum(min(x) >= -BOUND for x in d)
        print(f"| {n} | {' / '.join(f'{m:+.2f}' for m in mean)} | {worst[0]:+.2f} ({worst[1]}, {worst[2]}) | "
              f"{within}/{len(d)} | {speeds[1]['fp32'] / speeds[1][n]:.2f}x | {speeds[8]['fp32'] / speeds[8][n]:.2f}x |")
    print(f"\nFP32 median: batch 1 {speeds[1]['fp32']:.2f} ms, batch 8 {speeds[8]['fp32']:.2f} ms ({speed_run})")
    pick = choose(results, names, speeds)
    print(f"chosen on all sets: {pick}")
    for i, left in enumerate(results if len(results) > 1 else []):
        rest = results[:i] + results[i + 1:]
        p = choose(rest, names, speeds)
        held = f"{min(deltas(left, p)):+.2f} worst on it" if p else "nothing offered"
        print(f"leave {left['category']} out: {p} ({held})")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
