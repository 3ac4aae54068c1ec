"""Quality over every data set: train a recipe on each category under a data root, evaluate the full test
splits, and write one table (per set, the mean and the worst set, the four metrics) with its commands.

    python benchmarks/quality.py train --data ../shared/data --runs runs/quality/default [--time-budget 30]
        [--categories a,b] [--parallel 2] [-- EXTRA cfrg train FLAGS]
    python benchmarks/quality.py eval --data ../shared/data --runs runs/quality/default [--tag NAME]
        [-- EXTRA cfrg eval FLAGS, e.g. --memory-size 0 --map-normalisation none]
    python benchmarks/quality.py table --runs runs/quality/default [--tag NAME] [--out table.md]

`train` runs `cfrg train` per category (one torch thread each, --parallel at once; a category whose
model.pt exists is kept), and its final evaluation is the `default` tag. `eval` re-evaluates the saved
checkpoints with other map or score options without retraining (a new tag). Screen with short budgets,
decide with 30 minutes.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk.data import list_categories  # noqa: E402
from sdk.evaluate import METRIC_KEYS  # noqa: E402

CFRG = [sys.executable, "-m", "sdk.cli"]


def categories(args) -> list[str]:
    return args.categories.split(",") if args.categories else list_categories(args.data)


def run_all(commands: list[tuple[str, list[str], Path]], parallel: int) -> None:
    """Run (name, argv, log) commands, `parallel` at a time; report each as it ends."""
    pending, running = list(commands), []
    while pending or running:
        while pending and len(running) < parallel:
            name, argv, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            running.append((name, subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                                   cwd=ROOT), time.monotonic()))
            print(f"started {name}: {shlex.join(argv)}", flush=True)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"{name}: exit {proc.returncode} after {(time.monotonic() - t0) / 60:.1f} min", flush=True)
        time.sleep(2)


def cmd_train(args, extra: list[str]) -> None:
    runs = Path(args.runs)
    todo = []
    for c in categories(args):
        out = runs / c
        if (out / "model.pt").is_file() and (out / "metrics.json").is_file():
            print(f"{c}: kept {out / 'model.pt'}")
            continue
        argv = CFRG + ["train", "--data", args.data, "--category", c, "--out", str(out), "--time-budget",
                       str(args.time_budget), "--threads", "1", "--no-progress", *extra]
        todo.append((c, argv, out / "train.log"))
    (runs / "train_command.txt").parent.mkdir(parents=True, exist_ok=True)
    (runs / "train_command.txt").write_text(shlex.join(CFRG[2:] + ["train", "--time-budget", str(args.time_budget),
                                                                   "--threads", "1", *extra]) + "\n")
    run_all(todo, args.parallel)
    for c in categories(args):
        metrics = runs / c / "metrics.json"
        if metrics.is_file():
            (runs / c / "eval_default.json").write_text(metrics.read_text())


def cmd_eval(args, extra: list[str]) -> None:
    runs = Path(args.runs)
    todo = [(c, CFRG + ["eval", "--model", str(runs / c / "model.pt"), "--data", args.data, "--category", c,
                        "--json", str(runs / c / f"eval_{args.tag}.json"), "--no-progress", *extra],
             runs / c / f"eval_{args.tag}.log") for c in categories(args)]
    (runs / f"eval_{args.tag}_command.txt").write_text(shlex.join(["cfrg", "eval", *extra]) + "\n")
    run_all(todo, args.parallel)


def table(runs: Path, tag: str) -> str:
    rows = {}
    for path in sorted(runs.glob(f"*/eval_{tag}.json")):
        result = json.loads(path.read_text())
        rows[path.parent.name] = [100 * result[k] for k in METRIC_KEYS]
    if not rows:
        return f"no eval_{tag}.json under {runs}"
    lines = [f"| set ({tag}) | I-AUROC | P-AUROC | AUPRO | pixel AP |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for name, values in rows.items()]
    columns = list(zip(*rows.values()))
    lines.append("| **mean** | " + " | ".join(f"**{sum(c) / len(c):.1f}**" for c in columns) + " |")
    lines.append("| **worst** | " + " | ".join(f"**{min(c):.1f}**" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train", "eval", "table"])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", required=True)
    p.add_argument("--categories", help="comma-separated (default: every category under --data)")
    p.add_argument("--time-budget", type=float, default=30.0)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--tag", default="default")
    p.add_argument("--out", help="write the table here too")
    args = p.parse_args(argv)
    if args.command == "train":
        cmd_train(args, extra)
    elif args.command == "eval":
        cmd_eval(args, extra)
    text = table(Path(args.runs), args.tag)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
