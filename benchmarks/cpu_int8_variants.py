"""CPU INT8 variants on one run: which quantized part breaks the map (docs/deployment.md, "Why the CPU INT8 graph
fails"). python benchmarks/cpu_int8_variants.py RUN CATEGORY  (RUN: a folder with model.onnx, from cfrg export)"""
import json
import shutil
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import export.precision as P
from sdk.cli import main

run, cat = Path(sys.argv[1]), sys.argv[2]
out = Path("runs/why") / cat
out.mkdir(parents=True, exist_ok=True)
shutil.copy(run / "model.onnx", out / "model.onnx"); shutil.copy(run / "model.json", out / "model.json")
calib = [str(p) for p in __import__("export.runs", fromlist=["RunRecord"]).RunRecord.read(run, "../shared/data").holdout_files]
variants = {
    "as_built": (P.CNN_PARTS, dict.fromkeys(P.HEADS, 2.0), None),
    "teacher_fp32": (P.HEADS, dict.fromkeys(P.HEADS, 2.0), None),
    "teacher_only": (("/model/teacher/",), {}, None),
    "no_headroom": (P.CNN_PARTS, {}, None),
    "convs_only": (P.CNN_PARTS, dict.fromkeys(P.HEADS, 2.0), ["Conv", "Add", "Relu", "Clip"]),
}
orig_opts = P.int8_options
for name, (parts, headroom, ops) in variants.items():
    P.QUANTIZED["cpu-int8"], P.HEADROOM["cpu-int8"] = parts, headroom
    def opts(target, ops=ops):
        o = orig_opts(target)
        if ops and target == "cpu-int8":
            o["op_types_to_quantize"] = ops
        return o
    P.int8_options = opts
    g = out / f"{name}.cpu-int8.onnx"
    for f in out.glob("model.cpu-int8*"): f.unlink()
    P.write_precision_graph(out / "model.onnx", "cpu-int8", g, calib_files=calib, accept_drop=True, warn=lambda t: None)
    main(["eval", "--model", str(g), "--data", "../shared/data", "--category", cat, "--json", str(out / f"{name}.json"), "--no-progress"])
    m = json.load(open(out / f"{name}.json")); c = json.load(open(g.with_suffix(".json")))["precision_check"]
    print(f"RESULT {cat} {name}: " + " / ".join(f"{100*m[k]:.2f}" for k in ("image_auroc","pixel_auroc","aupro","pixel_ap")) + f"  rank {c['score_rank_correlation']:.4f}", flush=True)
