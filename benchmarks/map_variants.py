"""Research: pixel-map and image-score variants of trained runs, from cached per-image components.

`cache` runs each run's model once over its good training images, its held-back good images and its test
split, and keeps the raw parts the maps are made of (student and recovery discrepancies per scale, the
segmentation logit, nearest-patch distances, the global branch) in RUNS/<set>/components.pt. `table` then
rebuilds variants from them in seconds and scores them at model resolution (masks resized to the model's
input), so many variants can be compared across the five sets before one is built into the model.

    python benchmarks/map_variants.py cache --runs runs/quality/default30 [--categories a,b]
    python benchmarks/map_variants.py table --runs runs/quality/default30 [--variants a,b] [--scores map+mem+glob]

A variant is a base map with options, e.g. `plain_fused:kinds=ds+dr:sigma=3`:
- bases: `cfrg` (discrepancies z-scored per position, as map_normalisation "position"), `plain` (their plain
  sum; the paper's uses the recovery discrepancies only), `memory` (the patch-memory map); `fused` and
  `plain_fused` are the first two max-fused with the memory map, as in the model.
- options: kinds=ds+dr|dr|ds (student and/or recovery discrepancies), seg=W (weight of sigmoid(seg); `plain`
  takes 1 unless told, so the model's default sum map is `plain_fused:kinds=ds+dr:seg=1.5:sigma=3:segsigma=0`),
  sw=A+B+C (`plain`: the discrepancies' weight per scale, finest first; 1 each unless told), kw=A+B (`plain`:
  the weight of each kind, in the order kinds names them), pow=P (`plain`: each discrepancy raised to the power
  P before the sum; P < 1 compresses strong responses), align=A or A+B+C per scale (`plain`: each upsampled stride-s
  discrepancy moved A * (s - 1) / 2 pixels down and right, where the teacher's TF-"same" padding centres it; alignkinds=dr
  or ds: only that kind), malign=A (the same for the memory map),
  dilate=K (the final map's K x K max filter),
  fine=W (adds W times a fine-feature Gaussian map, below, to the map, after scaling both to the same good-image
  mean peak above their mean), with finelayers=0+1 (teacher scales, each resampled to the finest one's grid),
  finepool=5 (mean over K x K cells of those features first; odd), finehp=31 (the map minus its K x K mean; odd;
  0: none),
  sigma=S (smoothing), segsigma=S (smoothing of sigmoid(seg); 0: none), shrink=K and mean=position|global|poolN
  (per-position statistics: std shrink toward the global one, a global mean, or statistics max-pooled over N
  cells), norm=std|max|qP (how both maps are put on one scale before the max), mw=W (weight of the memory
  map), fuse=max|sum.
- scores: branches summed after z-scoring on good images: map (the map's max), mem (the memory's soft max),
  glob (the global Gaussian); `map+mem+glob` is the model's combined score.
The good images are the held-back ones when there are at least 8, else the training images (memory distances with
each image's own patches left out, as in the model).

The fine-feature Gaussian (option fine=, research): one Gaussian (mean, Ledoit-Wolf covariance) of the good training
images' finest teacher features (strides 4 and 8 by default, on the stride-4 grid), the same for every position
(no per-position statistics: its size does not grow with the image), fitted when a variant first asks for it (the
run's model.pt and images are read again); its map is each cell's Mahalanobis distance, upsampled and smoothed like
the discrepancies. The good images it is scaled on are those above; with fewer than 8 held back they are the
images the Gaussian was fitted on (no image is left out, unlike the memory). The image scores do not change.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sdk.run_record import RunRecord  # noqa: E402
from export.blocks import GaussianBlur, high_pass, soft_max, upsample as up  # noqa: E402
from export.checkpoint import load_model  # noqa: E402
from export.fitting import run_images  # noqa: E402
from export.gaussians import inverse_cholesky, ledoit_wolf, peak_above_mean  # noqa: E402
from export.model import to_tensor  # noqa: E402
from sdk import metrics  # noqa: E402
from sdk.data import AnomalyDataset  # noqa: E402
from sdk.evaluate import METRIC_KEYS, resize_for_model  # noqa: E402


@torch.no_grad()
def components(model, images: np.ndarray, batch: int = 16) -> dict:
    out: dict = {}
    for s in range(0, len(images), batch):
        x = to_tensor(images[s:s + batch])
        t = model.teacher_features(x)
        h = model.heads(x, t)
        parts = {f"ds{k}": d for k, d in enumerate(h["d_student"])}
        parts.update({f"dr{k}": d for k, d in enumerate(h["d_recovery"])})
        parts["seg"] = h["seg_logit"]
        parts["mem"] = model.memory.nearest_sq(model.memory.embed(t)).sqrt()
        parts["glob"] = (model.global_gaussian(t) if model.global_gaussian is not None else torch.zeros(len(x)))
        for k, v in parts.items():
            out.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def leave_one_out_distances(model, images: np.ndarray) -> torch.Tensor:
    """Each good training image's nearest-patch distances to the other images' patches (all of them: for the
    small sets this is used on, the memory holds every patch)."""
    emb = torch.cat([model.memory.embed(model.teacher_features(to_tensor(images[s:s + 16])))
                     for s in range(0, len(images), 16)])
    n, d, h, w = emb.shape
    bank = emb.permute(0, 2, 3, 1).reshape(-1, d)
    owner = torch.arange(n).repeat_interleave(h * w)
    out = []
    for i in range(n):
        q = emb[i].permute(1, 2, 0).reshape(-1, d)
        dist = torch.cdist(q, bank)
        dist[:, owner == i] = float("inf")
        out.append(dist.amin(1).view(1, 1, h, w))
    return torch.cat(out)


def memory_stats(model) -> dict:
    """The trained memory's z-score statistics (measured with each training image's own patches left out when
    there were too few held-back images: the cached training distances cannot redo that)."""
    m = model.memory
    return {"dist_mean": float(m.dist_mean), "dist_std": float(m.dist_std),
            "mem_score_mean": float(m.score_mean[1]), "mem_score_std": float(m.score_std[1])}


def evaluation_split(run: Path) -> AnomalyDataset:
    rec = RunRecord.read(run, None)
    return AnomalyDataset(rec.data, rec.category, "test")


def evaluation_images(test: AnomalyDataset, size) -> np.ndarray:
    return np.stack([resize_for_model(test.load_image(i, colour="rgb"), size) for i in range(len(test))])


def cache(run: Path) -> None:
    model = load_model(run / "model.pt").eval()
    size = model.config.image_size
    images, holdout, _ = run_images(run, None, size, False)
    test = evaluation_split(run)
    masks = np.stack([cv2.resize(test.load_mask(i).astype(np.uint8), (size[1], size[0]),
                                 interpolation=cv2.INTER_NEAREST) for i in range(len(test))]).astype(bool)
    train = components(model, images)
    if holdout is None or len(holdout) < 8:
        train["mem_loo"] = leave_one_out_distances(model, images)
    torch.save({"train": train,
                "holdout": components(model, holdout) if holdout is not None else None,
                "test": components(model, evaluation_images(test, size)), "masks": torch.from_numpy(masks),
                "labels": torch.tensor([test[i].label for i in range(len(test))]),
                "strides": model.strides, "sigma": model.config.gaussian_sigma, "seg_sigma": model.config.seg_sigma,
                "seg_weight": model.config.seg_weight, "memory_stride": model.memory.stride,
                "temperature": model.config.score_temperature, **memory_stats(model)}, run / "components.pt")
    print(f"{run.name}: cached {len(images)} train, {0 if holdout is None else len(holdout)} held back, "
          f"{len(test)} test", flush=True)


def shift_down_right(x: torch.Tensor, t: float) -> torch.Tensor:
    """x (N,1,H,W) moved t pixels down and t right (up and left if t < 0), bilinearly between whole pixels, the
    edge repeated."""
    h, w = x.shape[-2:]

    def whole(dy: int, dx: int) -> torch.Tensor:  # the edge padded in on the side the map moves away from
        padded = torch.nn.functional.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
        return padded[..., max(-dy, 0):max(-dy, 0) + h, max(-dx, 0):max(-dx, 0) + w]

    n = math.floor(t)
    f = t - n
    steps = [(0, 1 - f), (1, f)] if f else [(0, 1.0)]
    return sum(wy * wx * whole(n + a, n + b) for a, wy in steps for b, wx in steps)


def up_aligned(x: torch.Tensor, stride: int, align: float) -> torch.Tensor:
    """Upsampled, then moved align * (stride - 1) / 2 pixels down and right: the teacher's TF-"same" convolutions
    pad their stride-2 layers at the bottom and right, so a stride-s feature cell j is centred on pixel
    s*j + s - 1, not on s*j + (s - 1) / 2 where bilinear upsampling puts it (align=1 corrects that)."""
    return shift_down_right(up(x, stride), align * (stride - 1) / 2) if align else up(x, stride)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.cat([GaussianBlur(sigma)(x[s:s + 64]) for s in range(0, len(x), 64)])


def fine_features(model, images: np.ndarray, layers, pool: int, batch: int = 8):
    """Per batch of images: the teacher scales `layers`, each resampled to the finest one's grid, concatenated
    and averaged over pool x pool cells."""
    for s in range(0, len(images), batch):
        with torch.no_grad():
            t = model.teacher_features(to_tensor(images[s:s + batch]))
        size = t[layers[0]].shape[-2:]
        f = torch.cat([torch.nn.functional.interpolate(t[k].float(), size=size, mode="bilinear",
                                                       align_corners=False) if t[k].shape[-2:] != size
                       else t[k].float() for k in layers], 1)
        yield torch.nn.functional.avg_pool2d(f, pool, 1, pool // 2, count_include_pad=False) if pool > 1 else f


class FineGaussian:
    """One Gaussian of good feature vectors (rows of (N, D)), Ledoit-Wolf covariance; `distance` maps (N, D, h, w)
    features to (N, 1, h, w) Mahalanobis distances."""

    def __init__(self, rows: torch.Tensor, max_rows: int = 200_000):
        if len(rows) > max_rows:  # a fixed random sample: the covariance needs far fewer rows than the images give
            rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:max_rows]]
        self.mean = rows.double().mean(0).float()
        self.inv_chol = inverse_cholesky(ledoit_wolf(rows)[0]).float()  # |inv_chol (f - mean)|^2

    def distance(self, f: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("ij,njhw->nihw", self.inv_chol, f - self.mean.view(1, -1, 1, 1))
        return (y * y).sum(1, keepdim=True).sqrt()


class Variants:
    """Maps and scores of one set's cached components."""
    # up_aligned's correction of the teacher's offset (options align=, alignkinds=, malign=): none
    align, align_kinds, memory_align = [0.0], ("ds", "dr"), 0.0

    def __init__(self, c: dict, run: Path | None = None):
        self.c = c
        self.run = run  # the run folder: the fine-feature Gaussian reads its model and images again
        self.fine_cache: dict = {}
        self.strides = c["strides"]
        train = c["train"]
        self.n_scales = len(self.strides)
        self.stats = {}
        for kind in ("ds", "dr"):
            for k in range(self.n_scales):
                d = train[f"{kind}{k}"].double()
                # per position: mean and variance over images; global: the variance about the global mean, over
                # images and positions (as CFRG.fit_map)
                self.stats[f"{kind}{k}"] = (d.mean(0, keepdim=True), d.var(0, keepdim=True),
                                            d.var(unbiased=False))
        # the good images the fusion statistics come from: held back if there are at least 8, else training
        self.good = c["holdout"] if c["holdout"] is not None and len(c["holdout"]["mem"]) >= 8 else c["train"]

    def z(self, part: dict, key: str, shrink: float, mean_kind: str = "position") -> torch.Tensor:
        mean, var, gvar = self.stats[key]
        if mean_kind.startswith("pool"):  # position statistics tolerant to a shift of a few cells
            k = int(mean_kind[4:])
            mean = torch.nn.functional.max_pool2d(mean, k, 1, k // 2)
            var = torch.nn.functional.max_pool2d(var, k, 1, k // 2)
            m = mean
        else:
            m = mean if mean_kind == "position" else mean.mean()
        if shrink == float("inf"):
            return ((part[key].double() - m) / gvar.sqrt()).float()
        return ((part[key].double() - m) / torch.sqrt(var + shrink ** 2 * gvar + 1e-8)).float()

    def cfrg(self, part: dict, shrink: float = 0.5, kinds=("ds", "dr"), seg_weight: float | None = None,
             scales=None, mean_kind: str = "position") -> torch.Tensor:
        scales = range(self.n_scales) if scales is None else scales
        n = len(kinds) * len(scales)
        amap = sum(up(sum(self.z(part, f"{kind}{k}", shrink, mean_kind) for kind in kinds), self.strides[k]) for k in scales) / n
        return self.smoothed(amap, part, self.c["seg_weight"] if seg_weight is None else seg_weight)

    def plain(self, part: dict, kinds=("dr",), seg: float = 1.0, scale_weights=None, kind_weights=None,
              power: float = 1.0) -> torch.Tensor:
        w = scale_weights or [1.0] * self.n_scales
        kw = kind_weights or [1.0] * len(kinds)
        if len(self.align) not in (1, self.n_scales):
            raise ValueError(f"align= takes one value or one per scale ({self.n_scales}), got {self.align}")
        align = self.align if len(self.align) == self.n_scales else self.align * self.n_scales
        amap = sum(w[k] * kw[j] * up_aligned(part[f"{kind}{k}"] if power == 1 else
                                             part[f"{kind}{k}"].clamp_min(0) ** power, self.strides[k],
                                             align[k] if kind in self.align_kinds else 0.0)
                   for j, kind in enumerate(kinds)
                   for k in range(self.n_scales) if w[k] and kw[j])
        return self.smoothed(amap, part, seg)

    def smoothed(self, amap: torch.Tensor, part: dict, seg_weight: float) -> torch.Tensor:
        """The discrepancies smoothed plus the weighted sigmoid(seg) smoothed at seg_sigma, as CFRG.anomaly_map."""
        sigma = self.c["sigma"]
        if not seg_weight:
            return blur(amap, sigma)
        seg = seg_weight * torch.sigmoid(up(part["seg"], self.strides[0]))
        seg_sigma = self.c.get("seg_sigma")  # None (and caches from before seg_sigma): smoothed with the map
        if seg_sigma is None:
            return blur(amap + seg, sigma)
        return blur(amap, sigma) + (blur(seg, seg_sigma) if seg_sigma > 0 else seg)

    def memory(self, part: dict) -> torch.Tensor:
        return blur(up_aligned(part["mem"], self.c["memory_stride"], self.memory_align), self.c["sigma"])

    def fine_maps(self, layers: tuple[int, ...], pool: int, hp: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(good images', test images') fine-feature Gaussian maps at the model's input size, smoothed at sigma,
        high-passed over hp x hp pixels (hp 0: not)."""
        key = (layers, pool)
        if key not in self.fine_cache:  # the distances on the Gaussian's grid and that grid's stride
            if self.run is None:
                raise ValueError("fine= needs the run folder (Variants(c, run))")
            model = load_model(self.run / "model.pt").eval()
            size = model.config.image_size
            images, holdout, _ = run_images(self.run, None, size, False)
            gaussian = FineGaussian(torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                                               for f in fine_features(model, images, layers, pool)]))
            good = holdout if self.good is self.c["holdout"] else images
            self.fine_cache[key] = (model.strides[layers[0]], [
                torch.cat([gaussian.distance(f) for f in fine_features(model, imgs, layers, pool)])
                for imgs in (good, evaluation_images(evaluation_split(self.run), size))])
        stride, distances = self.fine_cache[key]
        maps = [blur(up(d, stride), self.c["sigma"]) for d in distances]
        return tuple(high_pass(m, hp) if hp else m for m in maps)


def zscore_on(good_map: torch.Tensor, test_map: torch.Tensor, norm: str = "std") -> torch.Tensor:
    g = good_map.double()
    if norm == "std":
        scale = g.std() + 1e-6
    elif norm == "max":  # good images' mean peak maps to 1
        scale = g.flatten(1).amax(1).mean() - g.mean()
    elif norm.startswith("q"):  # a high quantile of good pixels maps to 1
        flat = g.flatten()
        flat = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))[:2_000_000]]
        scale = torch.quantile(flat, float(norm[1:])) - g.mean()
    else:
        raise ValueError(norm)
    return ((test_map.double() - g.mean()) / scale).float()


def build(v: Variants, name: str) -> tuple[torch.Tensor, dict]:
    """(test pixel map, {branch: (good scores, test scores)}) of a named variant."""
    good, test = v.good, v.c["test"]
    spec = dict(p.split("=") for p in name.split(":")[1:]) if ":" in name else {}
    base = name.split(":")[0]
    shrink = float(spec.get("shrink", 0.5))
    kinds = tuple(spec.get("kinds", "ds+dr").split("+"))
    seg_w = float(spec["seg"]) if "seg" in spec else None

    def weights(option):  # "A+B+C" -> [A, B, C]; None when not given
        return [float(w) for w in spec[option].split("+")] if option in spec else None

    def the_map(part):
        if base in ("cfrg", "fused"):
            return v.cfrg(part, shrink, kinds, seg_w, mean_kind=spec.get("mean", "position"))
        if base in ("plain", "plain_fused"):
            return v.plain(part, kinds if "kinds" in spec else ("dr",), float(spec.get("seg", 1.0)),
                           weights("sw"), weights("kw"), float(spec.get("pow", 1.0)))
        if base == "memory":
            return v.memory(part)
        raise ValueError(name)

    smoothing = {key: float(spec[opt]) for opt, key in (("sigma", "sigma"), ("segsigma", "seg_sigma")) if opt in spec}
    if smoothing or {"align", "malign"} & set(spec):  # a copy: other smoothing or alignment, the same statistics
        v = copy.copy(v)
        v.c = {**v.c, **smoothing}
        v.align, v.memory_align = weights("align") or [0.0], float(spec.get("malign", 0.0))
        v.align_kinds = tuple(spec.get("alignkinds", "ds+dr").split("+"))
    gm, tm = the_map(good), the_map(test)
    tz = zscore_on(gm, tm)
    gz = zscore_on(gm, gm)
    c = v.c
    mem_z = {k: (part["mem"] - c["dist_mean"]) / c["dist_std"] for k, part in (("good", good), ("test", test))}
    mem_score = (soft_max(mem_z["test"], c["temperature"])[:, 0] - c["mem_score_mean"]) / c["mem_score_std"]
    branches = {"map": (gz.flatten(1).amax(1), tz.flatten(1).amax(1)),
                "mem": (None, mem_score),  # z-scored with the trained statistics
                "glob": (None, test["glob"])}  # z-scored in the model (0: not in use)
    if base.endswith("fused"):
        good_mem = good.get("mem_loo", good["mem"])
        gmm, tmm = v.memory({"mem": good_mem}), v.memory({"mem": test["mem"]})
        norm = spec.get("norm", "std")
        if norm == "std":  # the trained statistics, as in the model
            gmm, tmm = [(m - c["dist_mean"]) / c["dist_std"] for m in (gmm, tmm)]
        else:
            gmm, tmm = zscore_on(gmm, gmm, norm), zscore_on(gmm, tmm, norm)
            gz, tz = zscore_on(gm, gm, norm), zscore_on(gm, tm, norm)
        gmm, tmm = gmm * float(spec.get("mw", 1.0)), tmm * float(spec.get("mw", 1.0))
        fuse = spec.get("fuse", "max")
        tz = torch.maximum(tz, tmm) if fuse == "max" else (tz + tmm)
        gz = torch.maximum(gz, gmm) if fuse == "max" else (gz + gmm)
        branches["fusedmax"] = (gz.flatten(1).amax(1), tz.flatten(1).amax(1))
    if "fine" in spec:  # both maps at equal good-image peaks, the fine one weighted W
        layers = tuple(sorted(int(k) for k in spec.get("finelayers", "0+1").split("+")))  # finest first
        pool, hp = int(spec.get("finepool", 5)), int(spec.get("finehp", 31))
        if pool % 2 == 0 or (hp and hp % 2 == 0):  # an even window would move the map by half a cell
            raise ValueError(f"finepool and finehp take odd windows, got {pool} and {hp}")
        fg, ft = v.fine_maps(layers, pool, hp)
        tz = tz + float(spec["fine"]) * peak_above_mean(gz) * ((ft - fg.mean()) / peak_above_mean(fg)).float()
    if "dilate" in spec:  # each pixel takes its K x K neighbourhood's max (the image scores do not change)
        k = int(spec["dilate"])
        tz = torch.nn.functional.max_pool2d(tz, k, 1, k // 2)
    return tz, branches


def combined(branches: dict, use: list[str]) -> np.ndarray:
    total = 0
    for b in use:
        g, t = branches[b]
        total = total + (t if g is None else (t - g.mean()) / (g.std() + 1e-6))
    return np.asarray(total, dtype=np.float64)


def evaluate(c: dict, tmap: torch.Tensor, score: np.ndarray) -> list[float]:
    masks = [m.numpy() for m in c["masks"]]
    maps = [m[0].numpy() for m in tmap]
    labels = c["labels"].numpy()
    return [100 * metrics.image_auroc(labels, score), 100 * metrics.pixel_auroc(masks, maps),
            100 * metrics.aupro(masks, maps), 100 * metrics.pixel_ap(masks, maps)]


def write_eval(path: Path, m: list[float], variant: str, score: str) -> None:
    """The four metrics (percent, in METRIC_KEYS order) under `cfrg eval --json`'s names, as fractions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**{k: x / 100 for k, x in zip(METRIC_KEYS, m)}, "variant": variant, "score": score,
                                "resolution": "model input (map_variants.py)"}, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("cache", "table"))
    p.add_argument("--runs", required=True)
    p.add_argument("--categories")
    p.add_argument("--variants", default="fused,cfrg,plain,plain_fused,memory")
    p.add_argument("--scores", default="map+mem+glob", help="comma-separated branch sets, e.g. map+mem+glob")
    p.add_argument("--write-evals", metavar="DIR",
                   help="table: also write DIR/<set>/eval_<label>.json per variant (eval_<label>_<score> with several "
                        "--scores; the metrics at model resolution), for `quality.py loso --runs DIR`")
    p.add_argument("--labels", help="with --write-evals: one tag per variant, comma-separated")
    args = p.parse_args()
    labels = args.labels.split(",") if args.labels else None
    if args.write_evals and (labels is None or len(labels) != len(args.variants.split(","))):
        p.error("--write-evals needs --labels with one tag per variant")
    torch.set_num_threads(1)
    runs = Path(args.runs)
    cats = args.categories.split(",") if args.categories else sorted(d.parent.name for d in runs.glob("*/model.pt"))
    if args.command == "cache":
        for cat in cats:
            cache(runs / cat)
        return
    rows = {}
    for cat in cats:
        c = torch.load(runs / cat / "components.pt", weights_only=False)
        v = Variants(c, runs / cat)
        for i, name in enumerate(args.variants.split(",")):
            tmap, branches = build(v, name)
            for sc in args.scores.split(","):
                m = evaluate(c, tmap, combined(branches, sc.split("+")))
                rows.setdefault((name, sc), {})[cat] = m
                if args.write_evals:
                    tag = labels[i] if "," not in args.scores else f"{labels[i]}_{sc.replace('+', '_')}"
                    write_eval(Path(args.write_evals) / cat / f"eval_{tag}.json", m, name, sc)
                print(f"{cat:14s} {name:40s} {sc:18s} " + " ".join(f"{x:6.2f}" for x in m)
                      + f"  (mean of 4 {np.mean(m):.3f})", flush=True)
    print()
    print("| variant | score | " + " | ".join(cats) + " | mean | worst of 4-mean |")
    for (name, sc), per in rows.items():
        means = [np.mean(per[c]) for c in cats]
        allm = np.mean([per[c] for c in cats], 0)
        print(f"| {name} | {sc} | " + " | ".join("/".join(f"{x:.1f}" for x in per[c]) for c in cats)
              + " | " + "/".join(f"{x:.1f}" for x in allm) + f" | {min(means):.1f} |")


if __name__ == "__main__":
    main()
