"""Quality over every data set: train a recipe on each category under a data root, evaluate the full test
splits, and write one table (per set, the mean and the worst set, the four metrics) with its commands.

    python benchmarks/quality.py train --data ../shared/data --runs runs/quality/default [--time-budget 30]
        [--categories a,b] [--parallel 2] [-- EXTRA cfrg train FLAGS]
    python benchmarks/quality.py eval --data ../shared/data --runs runs/quality/default [--tag NAME]
        [-- EXTRA cfrg eval FLAGS, e.g. --memory-size 0 --map-normalisation none]
    python benchmarks/quality.py table --runs runs/quality/default [--tag NAME] [--out table.md]
    python benchmarks/quality.py compare --runs runs/quality/default [--tag NAME] --peer runs/quality/peer/patchcore
        --peer runs/quality/peer/padim
    python benchmarks/quality.py compare --runs runs/quality/seed0,runs/quality/seed1 --peer PADIM_SEED0,PADIM_SEED1
    python benchmarks/quality.py loso --runs runs/quality/default --tag BASELINE --candidates TAG1,TAG2

`train` runs `cfrg train` per category (one torch thread each, --parallel at once; a category whose
model.pt exists is kept), and its final evaluation is the `default` tag. `eval` re-evaluates the saved
checkpoints with other map or score options without retraining (a new tag). Screen with short budgets,
decide with 30 minutes. `compare` puts the peer (benchmarks/peer_anomalib.py) beside a tag, per set, with
issue 13's bar (comma-separated folders: seeds of one recipe, compared on their mean); `loso` is the
leave-one-set-out check of replacing a baseline tag by a candidate.
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
    kept = [c for c in categories(args) if (runs / c / f"eval_{args.tag}.json").is_file() and not args.again]
    for c in kept:
        print(f"{c}: kept {runs / c / f'eval_{args.tag}.json'} (--again evaluates it again)")
    todo = [(c, CFRG + ["eval", "--model", str(runs / c / "model.pt"), "--data", args.data, "--category", c,
                        "--json", str(runs / c / f"eval_{args.tag}.json"), "--no-progress", *extra],
             runs / c / f"eval_{args.tag}.log") for c in categories(args) if c not in kept]
    (runs / f"eval_{args.tag}_command.txt").write_text(shlex.join(["cfrg", "eval", *extra]) + "\n")
    run_all(todo, args.parallel)


def table(runs: Path, tag: str) -> str:
    rows = results(runs, tag)
    if not rows:
        return f"no eval_{tag}.json under {runs}"
    lines = [f"| set ({tag}) | I-AUROC | P-AUROC | AUPRO | pixel AP |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |" for name, values in rows.items()]
    columns = list(zip(*rows.values()))
    lines.append("| **mean** | " + " | ".join(f"**{sum(c) / len(c):.1f}**" for c in columns) + " |")
    lines.append("| **worst** | " + " | ".join(f"**{min(c):.1f}**" for c in columns) + " |")
    return "\n".join(lines)


def results(runs: Path, tag: str) -> dict[str, list[float]]:
    """Per set, the four metrics in percent (METRIC_KEYS order) of RUNS/<set>/eval_<tag>.json."""
    return {p.parent.name: [100 * json.loads(p.read_text())[k] for k in METRIC_KEYS]
            for p in sorted(runs.glob(f"*/eval_{tag}.json"))}


def mean_results(group: list[Path], tag: str) -> dict[str, list[float]]:
    """Per set found in every folder of the group (runs of one recipe with different seeds), the mean of their
    results(folder, tag)."""
    found = [results(runs, tag) for runs in group]
    return {s: [sum(r[s][k] for r in found) / len(found) for k in range(4)]
            for s in found[0] if all(s in r for r in found)}


def compare(runs: list[Path], tag: str, peers: list[list[Path]]) -> str:
    """Ours beside the better peer on each metric, per set and on the mean, with the bar of issue 13: at least
    equal on pixel AUROC, AUPRO and pixel AP, within 1 point on image AUROC, per set; ahead on all four on the mean.
    `runs` and each peer are groups of runs folders (seeds), compared on their means over the group."""
    ours = mean_results(runs, tag)
    theirs = {group[0].name: mean_results(group, "default") for group in peers}
    sets = [s for s in ours if all(s in t for t in theirs.values())]
    if not sets or not theirs:
        return (f"no sets with both eval_{tag}.json under every folder of {', '.join(map(str, runs))} and the "
                f"peers' eval_default.json")
    seeds = "" if len(runs) == 1 and all(len(g) == 1 for g in peers) else \
        f", means over {len(runs)} and {' / '.join(str(len(g)) for g in peers)} runs"
    lines = [f"| set | ours ({tag}) I / P / PRO / AP | best peer I / P / PRO / AP{seeds} | bar met |",
             "| --- | --- | --- | --- |"]

    def best(values):  # per metric, the better peer and its name
        return [max((v[k], name) for name, v in values.items()) for k in range(4)]

    def row(name, mine, peer, per_set=True):
        if per_set:  # the rounding of the table decides nothing: compare the measured values
            ok = [mine[0] >= peer[0][0] - 1.0] + [mine[k] >= peer[k][0] for k in (1, 2, 3)]
        else:
            ok = [mine[k] > peer[k][0] for k in range(4)]
        misses = [label for label, good in zip(("I-AUROC", "P-AUROC", "AUPRO", "AP"), ok) if not good]
        lines.append(f"| {name} | " + " / ".join(f"{v:.1f}" for v in mine) + " | " +
                     " / ".join(f"{v:.1f} ({n})" for v, n in peer) + " | " +
                     ("yes" if not misses else "no: " + ", ".join(misses)) + " |")

    for s in sets:
        row(s, ours[s], best({n: t[s] for n, t in theirs.items()}))
    mean = [sum(ours[s][k] for s in sets) / len(sets) for k in range(4)]
    peer_means = {n: [sum(t[s][k] for s in sets) / len(sets) for k in range(4)] for n, t in theirs.items()}
    row("**mean**", mean, best(peer_means), per_set=False)
    return "\n".join(lines)


def folders(text: str) -> list[Path]:
    return [Path(x) for x in text.split(",") if x]


LOSO_TIE = 0.001  # points of a set's mean of 4 that count as no change (a set scored again differs by ~1e-6)


def leave_one_out(runs: Path, baseline: str, candidates: list[str]) -> str:
    """For each set left out: the recipe the other sets choose, and what that choice does on the left-out set.
    On the per-set mean of the four metrics, a candidate replaces the baseline when the mean gains and either
    no set loses (by more than LOSO_TIE) or the worst set gains too (a choice that lifts one set and costs
    another must lift the worst); among such, the higher mean wins."""
    tags = [baseline, *candidates]
    found = {t: results(runs, t) for t in tags}
    sets = sorted(set.intersection(*(set(r) for r in found.values())))
    summary = {t: {s: sum(found[t][s]) / 4 for s in sets} for t in tags}

    def choose(among: list[str]) -> str:
        base = [summary[baseline][s] for s in among]
        best, best_mean = baseline, sum(base) / len(base)
        for t in candidates:
            vals = [summary[t][s] for s in among]
            costs_none = all(v >= b - LOSO_TIE for v, b in zip(vals, base))
            if sum(vals) / len(vals) > sum(base) / len(base) and (costs_none or min(vals) > min(base)) and \
                    sum(vals) / len(vals) > best_mean:
                best, best_mean = t, sum(vals) / len(vals)
        return best

    lines = [f"all {len(sets)} sets choose: {choose(sets)}", "",
             "| left out | the others choose | its mean of 4 on the left-out set | baseline's |", "| --- | --- | --- | --- |"]
    held_out = []
    for s in sets:
        pick = choose([o for o in sets if o != s])
        held_out.append((summary[pick][s], summary[baseline][s]))
        lines.append(f"| {s} | {pick} | {summary[pick][s]:.1f} | {summary[baseline][s]:.1f} |")
    mine, base = (sum(v) / len(v) for v in zip(*held_out))
    lines.append(f"| **mean over the sets left out** | | **{mine:.2f}** | **{base:.2f}** |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train", "eval", "table", "compare", "loso"])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--runs", required=True)
    p.add_argument("--categories", help="comma-separated (default: every category under --data)")
    p.add_argument("--time-budget", type=float, default=30.0)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--tag", default="default")
    p.add_argument("--again", action="store_true", help="eval: evaluate sets whose eval_TAG.json exists again")
    p.add_argument("--out", help="write the table here too")
    p.add_argument("--peer", action="append", default=[],
                   help="compare: a peer's runs folder (benchmarks/peer_anomalib.py), repeatable; comma-separated "
                        "folders (its --seed runs) are compared on their mean, as are comma-separated --runs")
    p.add_argument("--candidates", default="", help="loso: comma-separated tags that may replace --tag")
    args = p.parse_args(argv)
    if "," in args.runs and args.command != "compare":
        p.error(f"--runs {args.runs}: several folders (seeds) are for compare only; {args.command} takes one")
    if args.command == "train":
        cmd_train(args, extra)
    elif args.command == "eval":
        cmd_eval(args, extra)
    if args.command == "compare":
        text = compare(folders(args.runs), args.tag, [folders(x) for x in args.peer])
    elif args.command == "loso":
        text = leave_one_out(Path(args.runs), args.tag, [t for t in args.candidates.split(",") if t])
    else:  # one table per tag (comma-separated)
        text = "\n\n".join(table(Path(args.runs), tag) for tag in args.tag.split(","))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
