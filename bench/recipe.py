"""The whole recipe on real data, one command: what each stage is worth over seeds, and the leak beside it.

    python bench/recipe.py --size gpu                  # full data, one H100: ~25-35 min (estimated, see SIZES)
    python bench/recipe.py --size cpu                  # subsampled, 2 idle CPU cores: ~30 min
    python bench/recipe.py --size smoke                # every row end to end on a few rows (~3 min): wiring check
    python bench/recipe.py --size cpu --report-only    # rebuild the report from finished runs
    python bench/recipe.py --size gpu --datasets ell   # one dataset (the report keeps the other's results)
    python bench/recipe.py --size gpu --prepare-only   # write input/recipe/full/ only, to carry to a GPU machine

Datasets, read by path from ../shared/data ($DONTSTOP_SHARED_DATA), never copied into the repository:
- ell: Feedback Prize ELL, six scores, MCRMSE. Pool = the 2,571 real unlabelled ELLIPSE test essays. The pool is
  also every ELL row's test set, so docs/recipe/ell/<row>/pool_preds.csv holds each row's predictions on it.
- tweets: Kaggle disaster tweets, binary, F1. A labelled holdout with its labels hidden is every row's test
  set, scored afterwards (a private leaderboard). Pool = the 3,263 real unlabelled Kaggle test tweets.

Rows use configs/recipe/<dataset>_<row>.yaml, the same fold file and the same seeds (`train.seed`):
1 baseline, 2 + TAPT, 3 + leak-free pseudo-labels, 4 + self-distillation (2-4 each add ONE stage to the
baseline, so each row prices that stage), 5 the nested, honest ensemble of 1-4. Beside them: row 3 made
the way most notebooks make it, which dontstop refuses to run (bench/recipe_leak.py).

Writes derived CSVs to input/recipe/<data>/<dataset>/ (git-ignored). Experiments go to
oof/recipe_<size>/s<seed>/ and models/recipe_<size>/s<seed>/, the TAPT checkpoint once to
models/recipe_<size>/mlm/, and wall times to oof/recipe_<size>/timings.json. The report goes to
docs/recipe/results_<size>.json, docs/recipe/<size>_<dataset>.png and docs/RECIPE.md (every size with results).
A rerun skips finished experiments (the pipeline skips finished folds), so a killed run resumes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from recipe_leak import guard_refusal, leak_guard_disabled, write_leaky_pseudo
from recipe_report import pm, plot, render, summarise

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DONTSTOP_SHARED_DATA", ROOT.parent / "shared" / "data"))
CONFIGS = Path("configs") / "recipe"  # relative: main() runs from the repository root, commands print short
DOCS = ROOT / "docs"

ROWS = ("baseline", "tapt", "pseudo", "distill", "ensemble")
ROW_TEXT = {
    "baseline": "K-fold fine-tune of MiniLM",
    "tapt": "+ TAPT (`dontstop mlm` on train + pool text), then fine-tune from it",
    "pseudo": "+ leak-free pseudo-labels on the pool (teacher = baseline fold k)",
    "distill": "+ self-distillation (0.5 hard + 0.5 baseline-fold-k soft labels)",
    "ensemble": "hill-climbing blend of rows 1-4, nested CV",
    "pseudo_leaky": "LEAKY: row 3 with all-fold-average pseudo-labels",
    "pseudo_leaky_train_texts": "LEAKY: all-fold average, pool + the train texts themselves",
}
HOLDOUT_TWEETS = 1613  # labelled tweets kept back with hidden labels: 7,613 - 6,000 trained on at full size
@dataclass(frozen=True)
class Leaky:
    """A leaky variant of the pseudo row: trained outside the pipeline's guarantees, never an ensemble member."""
    row: str
    with_train_texts: bool  # the pool also holds the competition's own train texts, as notebooks' "test" often does


LEAKY = {"ell": (Leaky("pseudo_leaky", False),),
         "tweets": (Leaky("pseudo_leaky", False), Leaky("pseudo_leaky_train_texts", True))}


@dataclass(frozen=True)
class DataSize:
    n_train: int | None  # labelled rows the CV runs on (None: all)
    n_pool: int | None  # unlabelled pool rows (None: all)
    n_holdout: int | None = None  # tweets: labelled rows whose labels are hidden (the test set)
    overrides: tuple[str, ...] = ()  # config keys that differ from configs/recipe at this size


@dataclass(frozen=True)
class Size:
    data: str  # input/recipe/<data>/: the derived CSVs, shared by sizes that use the same rows
    seeds: tuple[int, ...]
    datasets: dict[str, DataSize] = field(default_factory=dict)


# Small sizes keep every stage but shrink rows, folds, tokens and epochs; 1 epoch still gives a real model.
_SMALL = ("folds.n_folds=3", "train.epochs=1", "mlm.eval_every=10", "mlm.holdout_fraction=0.1")
SIZES = {
    # the configs as committed: full data, 5 folds, max length 512 / 64. Not yet measured on a GPU: from
    # ../shared/BASELINES.md throughput, ~1 min per ELL training and ~0.5 min per tweets training; 11 trainings
    # per seed plus two MLM runs make ~25-35 min. Killed at the limit, a rerun resumes where it stopped.
    "gpu": Size("full", (0, 1, 2), {"ell": DataSize(None, None),
                                   "tweets": DataSize(6000, None, HOLDOUT_TWEETS)}),
    # 2 idle CPU cores, ~30 min for both datasets: measured, a cpu-size fold trains in ~10 s on idle cores, a
    # plain K-fold training takes ~40 s, a pseudo row ~65 s, the train-texts leaky row ~110 s (x 3 seeds)
    "cpu": Size("cpu", (0, 1, 2), {
        "ell": DataSize(210, 105, overrides=_SMALL + (
            "model.max_length=64", "mlm.max_length=64", "mlm.epochs=0.5", "mlm.head_warmup_steps=10",
            "mlm.batch_size=16")),
        "tweets": DataSize(300, 150, 150, overrides=_SMALL + (
            "model.max_length=48", "train.batch_size=16", "mlm.max_length=64", "mlm.epochs=2",
            "mlm.head_warmup_steps=10", "mlm.batch_size=16"))}),
    # proves every row end to end in a few minutes; the numbers mean nothing
    "smoke": Size("smoke", (0,), {
        "ell": DataSize(60, 24, overrides=(
            "folds.n_folds=2", "train.epochs=1", "model.max_length=32", "mlm.max_length=32", "mlm.epochs=0.2",
            "mlm.head_warmup_steps=2", "mlm.eval_every=5", "mlm.holdout_fraction=0.1", "mlm.batch_size=16")),
        "tweets": DataSize(80, 24, 24, overrides=(
            "folds.n_folds=2", "train.epochs=1", "model.max_length=32", "train.batch_size=16", "mlm.max_length=32",
            "mlm.epochs=0.5", "mlm.head_warmup_steps=2", "mlm.eval_every=5", "mlm.holdout_fraction=0.1",
            "mlm.batch_size=16"))}),
}
TEST_FILE = {"ell": "pool.csv", "tweets": "holdout.csv"}


# --- data: derived CSVs under input/recipe/<data>/<dataset>/ ----------------------------------------------------


def prepare_ell(out: Path, spec: DataSize) -> None:
    from dontstop.io import write_csv

    train = pd.concat([pd.read_csv(p) for p in sorted((DATA / "ell").glob("train_part*.csv"))], ignore_index=True)
    pool = pd.concat([pd.read_csv(p) for p in sorted((DATA / "ell").glob("unlabelled_pool_part*.csv"))],
                     ignore_index=True)
    if len(train) != 3911 or len(pool) != 2571:
        raise SystemExit(f"{DATA / 'ell'}: expected 3,911 train and 2,571 pool essays, found "
                         f"{len(train)} / {len(pool)}")
    write_csv(out / "train.csv", _sample(train, spec.n_train))
    write_csv(out / "pool.csv", _sample(pool, spec.n_pool))


def prepare_tweets(out: Path, spec: DataSize) -> None:
    from sklearn.model_selection import train_test_split

    from dontstop.io import write_csv

    labelled = pd.read_csv(DATA / "disaster_tweets" / "train.csv")
    # one split for every size: a smaller size samples from the same two sides, so no holdout row is ever trained on
    train_all, holdout_all = train_test_split(labelled, test_size=HOLDOUT_TWEETS, stratify=labelled["target"],
                                              random_state=0)
    holdout, train = _sample(holdout_all, spec.n_holdout), _sample(train_all, spec.n_train)
    write_csv(out / "train.csv", train)
    write_csv(out / "holdout.csv", holdout.drop(columns="target"))
    write_csv(out / "holdout_labels.csv", holdout[["id", "target"]])  # read by this bench only, to score test.csv
    write_csv(out / "pool.csv", sample_pool(pd.read_csv(DATA / "disaster_tweets" / "test.csv"), train_all, train,
                                            spec.n_pool))


def _sample(frame: pd.DataFrame, n: int | None) -> pd.DataFrame:
    return frame if n is None or n >= len(frame) else frame.sample(n=n, random_state=0).sort_index()


def near_duplicate_key(texts: pd.Series) -> pd.Series:
    """A tweet without its links, lower-cased: retweets of one headline differ only in their t.co links (400 of
    the 3,263 Kaggle test tweets repeat a labelled tweet this way; dontstop's pool de-duplication, on exact
    text, keeps them)."""
    without_links = texts.str.replace(r"https?://\S+", "", regex=True)
    return without_links.str.replace(r"\s+", " ", regex=True).str.strip().str.lower()


def sample_pool(pool: pd.DataFrame, train_all: pd.DataFrame, train: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """n pool tweets that keep the full data's share of near-duplicates of the training tweets. Those
    near-duplicates are the channel through which an all-fold-average pseudo-label leaks fold k's labels back
    to fold k. A uniform sample of a subsampled train would lose them, so a small size could not show the leak
    that the full size has."""
    if n is None or n >= len(pool):
        return pool
    full_share = near_duplicate_key(pool["text"]).isin(set(near_duplicate_key(train_all["text"]))).mean()
    is_dup = near_duplicate_key(pool["text"]).isin(set(near_duplicate_key(train["text"])))
    n_dup = min(int(round(full_share * n)), int(is_dup.sum()))
    return pd.concat([_sample(pool[is_dup], n_dup), _sample(pool[~is_dup], n - n_dup)]).sort_index()


PREPARE = {"ell": prepare_ell, "tweets": prepare_tweets}


# --- running the rows -----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, size_name: str, log=print):
        self.name, self.size, self.log = size_name, SIZES[size_name], log
        self.root = ROOT / "oof" / f"recipe_{size_name}"
        self.timings_path = self.root / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}

    def data_dir(self, ds: str) -> str:
        return f"input/recipe/{self.size.data}/{ds}"

    def overrides(self, ds: str, row: str, seed: int) -> list[str]:
        d = self.data_dir(ds)
        out = [f"competition.train={d}/train.csv", f"competition.test={d}/{TEST_FILE[ds]}",
               f"folds.file={d}/folds.csv", f"oof_dir=oof/recipe_{self.name}/s{seed}",
               f"models_dir=models/recipe_{self.name}/s{seed}", f"train.seed={seed}",
               *self.size.datasets[ds].overrides]
        if row == "tapt":
            out.append(f"model.backbone=models/recipe_{self.name}/mlm/{ds}_tapt")
        if row.startswith("pseudo"):
            out.append(f"pseudo.pool={d}/pool.csv")
        return out

    def config(self, ds: str, row: str, seed: int):
        from dontstop.config import load_config

        source = "pseudo" if row.startswith("pseudo") else row  # a leaky row is the pseudo config, renamed
        cfg = load_config(CONFIGS / f"{ds}_{source}.yaml", self.overrides(ds, row, seed))
        cfg.experiment = f"{ds}_{row}"
        return cfg

    def command(self, stage: str, ds: str, row: str, seed: int) -> list[str]:
        return [stage, str(CONFIGS / f"{ds}_{row}.yaml"), *self.overrides(ds, row, seed)]

    def dontstop(self, args: list[str]) -> None:
        from dontstop.cli import main

        self.log("$ python -m dontstop " + shlex.join(str(a) for a in args))
        if main([str(a) for a in args]) != 0:
            raise SystemExit(f"dontstop {args[0]} failed (see above); rerun this command to resume")

    def timed(self, key: str, fn, accumulate: bool = True) -> None:
        """Wall time of a step that really ran; a resumed step adds its remaining part."""
        started = time.time()
        fn()
        elapsed = time.time() - started
        self.timings[key] = round((self.timings.get(key, 0.0) if accumulate else 0.0) + elapsed, 2)
        from dontstop.io import write_json
        write_json(self.timings_path, self.timings)

    def run(self, datasets: list[str], seeds: list[int], command: str) -> None:
        from dontstop.io import write_json

        write_json(self.root / "run.json", {"command": command, "device": device_name(),
                                            "date": dt.date.today().isoformat()})
        started = time.time()
        for ds in datasets:
            self.prepare(ds)
            self.dontstop(self.command("folds", ds, "baseline", seeds[0]))
            self.run_mlm(ds, seeds[0])
            for seed in seeds:
                self.log(f"== {ds}, seed {seed}")
                for row in ("baseline", "tapt", "pseudo", "distill"):
                    self.run_row(ds, row, seed)
                for leaky in LEAKY[ds]:
                    self.run_leaky(ds, leaky, seed)
                self.timed(f"s{seed}/{ds}_ensemble/ensemble",
                           lambda: self.dontstop(self.command("ensemble", ds, "ensemble", seed)), accumulate=False)
                self.log(f"== {ds}, seed {seed} done; {(time.time() - started) / 60:.1f} min since this run started")

    def prepare(self, ds: str) -> None:
        out = ROOT / self.data_dir(ds)
        if not DATA.is_dir() and (out / "train.csv").is_file():  # e.g. on a GPU box the derived files were carried to
            self.log(f"{DATA} is not here: using the derived files in {out}")
            return
        PREPARE[ds](out, self.size.datasets[ds])

    def run_mlm(self, ds: str, seed: int) -> None:
        """One TAPT checkpoint per size, shared by every seed (the seeds vary the fine-tuning)."""
        command = self.command("mlm", ds, "tapt", seed) + [f"models_dir=models/recipe_{self.name}"]
        if ds == "tweets":  # the pool joins the corpus (ELL's pool is its test set, already in it)
            command.append(f"mlm.extra=[{{path: {self.data_dir(ds)}/pool.csv, column: text}}]")
        marker = ROOT / "models" / f"recipe_{self.name}" / "mlm" / f"{ds}_tapt" / "mlm_run.json"
        before = marker.stat().st_mtime if marker.is_file() else None
        started = time.time()
        self.dontstop(command)
        if not marker.is_file() or marker.stat().st_mtime != before:  # it ran (an identical rerun is skipped)
            from dontstop.io import write_json
            self.timings[f"mlm/{ds}_tapt"] = round(time.time() - started, 2)
            write_json(self.timings_path, self.timings)

    def run_row(self, ds: str, row: str, seed: int) -> None:
        cfg = self.config(ds, row, seed)
        if finished(cfg):
            self.log(f"{cfg.experiment} (seed {seed}): finished earlier, skipped")
            return
        for stage in cfg.stages:
            if stage in ("pseudo", "distill", "train"):
                self.timed(f"s{seed}/{cfg.experiment}/{stage}",
                           lambda stage=stage: self.dontstop(self.command(stage, ds, row, seed)))

    def run_leaky(self, ds: str, leaky: Leaky, seed: int) -> None:
        from dontstop.io import write_json
        from dontstop.train import run_train

        cfg = self.config(ds, leaky.row, seed)
        if finished(cfg):
            self.log(f"{cfg.experiment} (seed {seed}): finished earlier, skipped")
            return
        leak_free = self.config(ds, "pseudo", seed)

        def make_and_train():
            write_leaky_pseudo(cfg, leak_free.oof_path, leaky.with_train_texts, self.log)
            refusal = guard_refusal(cfg)
            self.log(f"{cfg.experiment}: dontstop refuses these pseudo-labels: {refusal}")
            write_json(cfg.oof_path / "leak_demo.json", {"refused_by_dontstop": refusal,
                                                         "trained_with": "bench/recipe.py leak_guard_disabled"})
            self.log(f"{cfg.experiment}: training with the leak guard patched out (a demonstration, not the pipeline)")
            with leak_guard_disabled():
                if run_train(cfg) is None:
                    raise SystemExit(f"{cfg.experiment}: training did not finish")

        self.timed(f"s{seed}/{cfg.experiment}/train", make_and_train)


def finished(cfg) -> bool:
    """Its scores.json exists and was made with exactly this resolved config."""
    from dontstop.config import dump_config

    saved = cfg.oof_path / "config.yaml"
    return (cfg.oof_path / "scores.json").is_file() and saved.is_file() and saved.read_text() == dump_config(cfg)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor())
    return f"CPU: {model}, {os.cpu_count()} cores, no GPU (torch {torch.__version__})"


# --- results: collected here, rendered by bench/recipe_report.py ---------------------------------------------


def collect(bench: Bench, datasets: list[str], seeds: list[int]) -> dict:
    """Every finished row's per-seed CV, fold scores, holdout score and wall time, as one JSON-able dict."""
    from dontstop.metrics import score

    run = json.loads((bench.root / "run.json").read_text()) if (bench.root / "run.json").is_file() else {}
    result = {"size": bench.name, "seeds": seeds, **run, "datasets": {}}
    for ds in datasets:
        first = next((bench.root / f"s{s}" / f"{ds}_baseline" / "scores.json" for s in seeds
                      if (bench.root / f"s{s}" / f"{ds}_baseline" / "scores.json").is_file()), None)
        if first is None:
            continue  # nothing of this dataset has finished at this size
        meta = json.loads(first.read_text())
        d = ROOT / bench.data_dir(ds)
        labels = pd.read_csv(d / "holdout_labels.csv", dtype={"id": str}) if ds == "tweets" else None
        rows = []
        for row in ROWS + tuple(leaky.row for leaky in LEAKY[ds]):
            entry = {"row": row, "experiment": f"{ds}_{row}", "leaky": "leaky" in row, "text": ROW_TEXT[row],
                     "cv": [], "fold_scores": [], "holdout": [], "wall_s": [], "seeds": []}
            for seed in seeds:
                folder = bench.root / f"s{seed}" / f"{ds}_{row}"
                if not (folder / "scores.json").is_file():
                    continue
                scores = json.loads((folder / "scores.json").read_text())
                entry["seeds"].append(seed)
                entry["cv"].append(scores["cv"])
                entry["fold_scores"].append(scores["fold_scores"])
                entry["wall_s"].append(round(sum(v for k, v in bench.timings.items()
                                                 if k.startswith(f"s{seed}/{ds}_{row}/")), 1))
                if labels is not None:
                    test = pd.read_csv(folder / "test.csv", dtype={"id": str}).set_index("id").loc[labels["id"]]
                    entry["holdout"].append(score(scores["metric"], "binary", labels["target"].to_numpy(),
                                                  test["pred_target"].to_numpy()))
                if entry["leaky"] and (folder / "leak_demo.json").is_file():
                    entry["refusal"] = json.loads((folder / "leak_demo.json").read_text())["refused_by_dontstop"]
            rows.append(entry)
        mlm_file = ROOT / "models" / f"recipe_{bench.name}" / "mlm" / f"{ds}_tapt" / "mlm_scores.json"
        mlm = json.loads(mlm_file.read_text()) if mlm_file.is_file() else {}
        spec = bench.size.datasets[ds]
        result["datasets"][ds] = {
            "metric": meta.get("metric"), "greater_is_better": meta.get("greater_is_better"),
            "constant_cv": meta.get("baseline_cv"), "n_train": meta.get("n_rows"), "n_folds": meta.get("n_folds"),
            "n_pool": int(len(pd.read_csv(d / "pool.csv", usecols=[0]))) if (d / "pool.csv").is_file() else None,
            "n_holdout": None if labels is None else len(labels), "overrides": list(spec.overrides),
            "mlm": {k: mlm.get(k) for k in ("perplexity_before", "perplexity_after", "masked_token_accuracy",
                                            "steps", "n_documents", "n_train_tokens")},
            "mlm_wall_s": bench.timings.get(f"mlm/{ds}_tapt"), "rows": rows,
            "example_command": "python -m dontstop " + shlex.join(bench.command("train", ds, "baseline", seeds[0]))}
    return result


def write_pool_preds(bench: Bench, result: dict) -> None:
    """ELL: each row's fold-averaged pool predictions (the rows' test.csv), averaged over seeds."""
    from dontstop.io import write_csv

    info = result["datasets"].get("ell")
    if not info:
        return
    targets = ["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]
    for r in info["rows"]:
        frames = [pd.read_csv(bench.root / f"s{s}" / r["experiment"] / "test.csv").set_index("text_id")
                  for s in r["seeds"]]
        if not frames:
            continue
        mean = sum(f[[f"pred_{t}" for t in targets]].to_numpy() for f in frames) / len(frames)
        out = pd.DataFrame(mean, columns=targets).round(5)
        out.insert(0, "text_id", frames[0].index.to_numpy())
        write_csv(DOCS / "recipe" / "ell" / r["row"] / "pool_preds.csv", out)


def report(bench: Bench, seeds: list[int]) -> dict:
    """Everything finished at this size (whatever --datasets ran this time) -> docs/."""
    from dontstop.io import write_json, write_text

    result = collect(bench, sorted(PREPARE), sorted(set(seeds) | set(bench.size.seeds)))
    result["seeds"] = sorted({s for info in result["datasets"].values() for s in info["rows"][0]["seeds"]})
    write_json(DOCS / "recipe" / f"results_{bench.name}.json", result)
    for ds in result["datasets"]:
        plot(result, ds, DOCS / "recipe" / f"{bench.name}_{ds}.png")
    write_pool_preds(bench, result)
    order = [s for s in SIZES if (DOCS / "recipe" / f"results_{s}.json").is_file()]
    results = [json.loads((DOCS / "recipe" / f"results_{s}.json").read_text()) for s in order]
    write_text(DOCS / "RECIPE.md", render(results, bench.name))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the size's seeds")
    parser.add_argument("--datasets", nargs="+", choices=sorted(PREPARE), default=sorted(PREPARE))
    parser.add_argument("--report-only", action="store_true", help="rebuild docs/ from finished runs")
    parser.add_argument("--prepare-only", action="store_true",
                        help="only write the derived CSVs to input/recipe/<data>/ (to carry them to a machine without "
                             "../shared/data)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # config paths are relative to the repository root
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    bench = Bench(args.size)
    seeds = args.seeds or list(bench.size.seeds)
    started = time.time()
    if args.prepare_only:
        for ds in args.datasets:
            bench.prepare(ds)
        print(f"wrote input/recipe/{bench.size.data}/")
        return 0
    if not args.report_only:
        command = "python bench/recipe.py " + " ".join(sys.argv[1:] if argv is None else argv)
        bench.run(args.datasets, seeds, command)
    result = report(bench, seeds)
    for ds, info in result["datasets"].items():
        base = info["rows"][0]
        for r in info["rows"]:
            s = summarise(r, base, bool(info["greater_is_better"]))
            if s["n_seeds"]:
                print(f"{ds:7} {r['row']:26} {info['metric']} {pm(s['cv_mean'], s['cv_std'])}"
                      + (f"  Δ {s['diff_mean']:+.4f} ({s['folds_better']}/{s['folds_total']} folds better)"
                         if "diff_mean" in s else ""))
    print(f"wrote docs/RECIPE.md and docs/recipe/ in {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
