"""A local leaderboard (`dontstop compare [oof/]`): every experiment under oof/, ranked by CV.

Reads `oof/<exp>/scores.json` (finished experiments), `fold<k>.json` (unfinished ones) and `oof.csv`.
Prints a table; `--csv` / `--markdown` write it; `--plot DIR` writes per-fold scores and the correlation
matrix of the experiments' OOF predictions as PNGs. Experiments made on different fold files, with
different ids or different metrics are never ranked together: the command says which differ.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


class CompareError(ValueError):
    """Experiments that cannot be ranked together (the message names them)."""


def load_experiments(root: Path) -> tuple[list[dict], list[dict]]:
    """Finished experiments (their scores.json + OOF ids) and incomplete ones (folds done so far)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: train an experiment first (bash scripts/train_folds.sh)")
    finished, incomplete = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        scores_file = folder / "scores.json"
        if scores_file.is_file():
            scores = json.loads(scores_file.read_text())
            missing = [k for k in ("metric", "greater_is_better", "cv", "fold_scores", "fold_file_hash") if k not in scores]
            if missing:
                raise CompareError(f"{scores_file} lacks {missing}: not a dontstop result, or a damaged one")
            scores["experiment"] = folder.name
            finished.append(scores)
        elif list(folder.glob("fold*.json")):
            done = sorted(int(p.stem[4:]) for p in folder.glob("fold*.json") if p.stem[4:].isdigit())
            incomplete.append({"experiment": folder.name, "folds_done": done})
    return finished, incomplete


def _oof_ids(root: Path, exp: str) -> frozenset:
    path = Path(root) / exp / "oof.csv"
    return frozenset(pd.read_csv(path, usecols=[0], dtype=str).iloc[:, 0]) if path.is_file() else frozenset()


def check_comparable(experiments: list[dict], root: Path) -> None:
    """Same fold file, same ids, same metric: otherwise name the groups that differ."""
    for key, what in (("fold_file_hash", "fold files"), ("metric", "metrics")):
        groups: dict = {}
        for e in experiments:
            groups.setdefault(e.get(key), []).append(e["experiment"])
        if len(groups) > 1:
            shown = "; ".join(f"{str(k)[:12]}: {', '.join(v)}" for k, v in groups.items())
            raise CompareError(f"cannot rank experiments made with different {what} ({shown}); "
                               f"compare one group at a time with --only")
    id_groups: dict = {}
    for e in experiments:
        id_groups.setdefault(_oof_ids(root, e["experiment"]), []).append(e["experiment"])
    if len(id_groups) > 1:
        shown = "; ".join(f"{len(ids)} ids: {', '.join(v)}" for ids, v in id_groups.items())
        raise CompareError(f"cannot rank experiments with different OOF id sets ({shown})")


def _stages(e: dict) -> str:
    cfg = e.get("config", {})
    used = [s for s in e.get("stages", []) if s in ("mlm", "pseudo", "distill", "ensemble")]
    if "mlm" not in used and "models/mlm" in str(cfg.get("model", {}).get("backbone", "")):
        used.insert(0, "mlm")
    return "+".join(used) or "-"


def leaderboard(experiments: list[dict], baseline: str | None = None) -> pd.DataFrame:
    if not experiments:
        return pd.DataFrame()
    greater = experiments[0]["greater_is_better"]
    rows = []
    by_name = {e["experiment"]: e for e in experiments}
    if baseline is not None and baseline not in by_name:
        raise CompareError(f"--baseline {baseline}: no finished experiment of that name ({', '.join(by_name)})")
    for e in experiments:
        folds = np.asarray(e["fold_scores"], dtype=float)
        row = {"experiment": e["experiment"], "cv": e["cv"], "fold_mean": folds.mean(), "fold_std": folds.std(),
               "constant_cv": e.get("baseline_cv"), "backbone": Path(str(e.get("backbone", ""))).name or "-",
               "stages": _stages(e), "wall_s": round(sum((e.get("wall_time_s") or {}).values()), 1)}
        row.update({f"fold{k}": s for k, s in enumerate(folds)})
        if baseline is not None:
            diff = folds - np.asarray(by_name[baseline]["fold_scores"], dtype=float)
            better = diff > 0 if greater else diff < 0
            row["diff_vs_" + baseline] = diff.mean()
            row["folds_better"] = f"{int(better.sum())}/{len(diff)}"
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("cv", ascending=not greater).reset_index(drop=True)
    table.index = table.index + 1
    return table


def oof_correlation(experiments: list[dict], root: Path) -> pd.DataFrame:
    """Pearson correlation of the experiments' OOF predictions (all prediction columns, flattened)."""
    columns = {}
    for e in experiments:
        oof = pd.read_csv(Path(root) / e["experiment"] / "oof.csv")
        columns[e["experiment"]] = oof[[c for c in oof.columns if c.startswith("pred_")]].to_numpy().ravel()
    return pd.DataFrame(columns).corr()


def plot(table: pd.DataFrame, corr: pd.DataFrame, out_dir: Path, metric: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fold_cols = [c for c in table.columns if c.startswith("fold") and c[4:].isdigit()]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(fold_cols) + 3), 4))
    for _, row in table.iterrows():
        ax.plot(range(len(fold_cols)), row[fold_cols].to_numpy(dtype=float), marker="o", label=row["experiment"])
    ax.set_xticks(range(len(fold_cols)), fold_cols)
    ax.set_ylabel(metric)
    ax.set_title("score per fold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [out_dir / "fold_scores.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(2 + 0.8 * len(corr), 1.5 + 0.8 * len(corr)))
    image = ax.imshow(corr.to_numpy(), vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(corr)), corr.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(corr)), corr.columns)
    for i in range(len(corr)):
        for j in range(len(corr)):
            ax.text(j, i, f"{corr.iat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image)
    ax.set_title("OOF prediction correlation")
    fig.tight_layout()
    paths.append(out_dir / "oof_correlation.png")
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def run_compare(root: str = "oof", baseline: str | None = None, only: list[str] | None = None,
                csv: str | None = None, markdown: str | None = None, plot_dir: str | None = None) -> pd.DataFrame:
    from dontstop.io import write_csv, write_text

    root_path = Path(root)
    finished, incomplete = load_experiments(root_path)
    if only:
        unknown = sorted(set(only) - {e["experiment"] for e in finished})
        if unknown:
            raise CompareError(f"--only: no finished experiment named {unknown} under {root_path}")
        finished = [e for e in finished if e["experiment"] in only]
    check_comparable(finished, root_path)
    table = leaderboard(finished, baseline)
    if table.empty:
        print(f"no finished experiment under {root_path}")
    else:
        metric = finished[0]["metric"]
        direction = "higher" if finished[0]["greater_is_better"] else "lower"
        print(f"metric: {metric} ({direction} is better); fold file {str(finished[0]['fold_file_hash'])[:12]}")
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.5f}".format):
            print(table.to_string())
    for e in incomplete:
        print(f"incomplete: {e['experiment']} (folds finished: {e['folds_done'] or 'none'})")
    if csv and not table.empty:
        write_csv(csv, table.reset_index(names="rank"))
    if markdown and not table.empty:
        write_text(markdown, _markdown(table.reset_index(names="rank")))
    if plot_dir and not table.empty:
        for path in plot(table, oof_correlation(finished, root_path), Path(plot_dir), finished[0]["metric"]):
            print(f"wrote {path}")
    return table


def _markdown(table: pd.DataFrame) -> str:
    fmt = lambda v: f"{v:.5f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
