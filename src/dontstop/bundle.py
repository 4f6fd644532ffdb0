"""`dontstop package`: one folder that carries an experiment (or an ensemble of them) to an offline Kaggle kernel.

    bundle.json             what `infer` needs: the competition's id / target / class layout, each member's
                            folds with every file's size and sha256, and the blend weights
    dataset-metadata.json   for `kaggle datasets create -p DIR --dir-mode zip`
    README.md               the kernel cell to paste
    wheels/dontstop-<version>-py3-none-any.whl      installed in the kernel with --no-index --no-deps
    members/<experiment>/fold<k>/   model.safetensors (fp16 optional), config.json, head.json, tokenizer files

Every path uses letters, digits and `._-/` only: Kaggle refuses some characters (e.g. `=`) in file names.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from dontstop.config import Config, config_from_dict
from dontstop.io import file_sha256, read_json, write_json, write_text
from dontstop.models import HEAD_NAME, WEIGHTS_NAME

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class BundleError(ValueError):
    """A bundle cannot be written or read; the message names the file or member."""


def safe_name(name: str) -> str:
    return _SAFE_NAME.sub("-", name)


def bundle_members(cfg: Config) -> tuple[list[str], dict | None]:
    """The experiments to ship and the blend over them: an ensemble config ships its members with its fitted
    weights.json; any other config ships itself (its folds are averaged, no blend)."""
    is_ensemble = "ensemble" in cfg.stages or bool(cfg.ensemble.members)
    if not is_ensemble:
        return [cfg.experiment], None
    weights = cfg.oof_path / "weights.json"
    if not weights.is_file():
        raise BundleError(f"{weights} does not exist: run `python -m dontstop ensemble` for this config first")
    blend = read_json(weights)
    return list(blend["members"]), blend


def _member_config(cfg: Config, name: str) -> tuple[Config, dict]:
    scores_path = Path(cfg.oof_dir) / name / "scores.json"
    if not scores_path.is_file():
        raise BundleError(f"experiment {name!r} is not finished ({scores_path} is missing): train it first")
    scores = read_json(scores_path)
    return config_from_dict(scores["config"], name, file=str(scores_path)), scores


def _fold_dirs(member_cfg: Config, n_folds: int) -> list[Path]:
    dirs = [member_cfg.models_path / f"fold{k}" for k in range(n_folds)]
    unfinished = [str(d) for d in dirs if not (d / WEIGHTS_NAME).is_file() or not (d / HEAD_NAME).is_file()]
    if unfinished:
        raise BundleError(f"experiment {member_cfg.experiment!r} has {n_folds} folds, but these hold no finished "
                          f"model: {', '.join(unfinished)}; retrain them (python -m dontstop train)")
    return dirs


def _copy_fold(src: Path, dst: Path, fp16: bool) -> dict:
    """Copy one fold model's files; weights optionally halved to fp16. Returns {file: {bytes, sha256}}."""
    dst.mkdir(parents=True, exist_ok=True)
    files = {}
    for path in sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith(".")):
        target = dst / safe_name(path.name)
        if path.name == WEIGHTS_NAME and fp16:
            from safetensors.torch import load_file, save_file

            state = load_file(str(path))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(target))
        else:
            shutil.copyfile(path, target)
        files[target.name] = {"bytes": target.stat().st_size, "sha256": file_sha256(target)}
    return files


def build_wheel(out_dir: Path) -> Path:
    """Build dontstop's own wheel from its source tree (offline: no build isolation, no dependencies)."""
    import dontstop

    root = Path(dontstop.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise BundleError(f"dontstop is not installed from its source tree (no pyproject.toml at {root}); "
                          f"install it with `pip install -e .` from the repository to package it")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--no-index", "--quiet", "--wheel-dir", str(out_dir), str(root)],
                            capture_output=True, text=True)
    wheels = sorted(out_dir.glob("dontstop-*.whl"))
    if result.returncode != 0 or not wheels:
        raise BundleError(f"building the dontstop wheel failed (needs setuptools>=70.1, see requirements.txt):\n"
                          f"{result.stderr.strip()[-2000:]}")
    return wheels[-1]


def _competition_layout(cfg: Config, first_head: dict) -> dict:
    """What infer needs to write a submission without the train file: ids, targets, classes, label dtypes and
    the sample submission's columns."""
    spec = cfg.competition
    train_dtypes = {}
    if Path(spec.train).is_file():
        head = pd.read_csv(spec.train, usecols=spec.target_columns, nrows=10_000)
        train_dtypes = {c: str(head[c].dtype) for c in spec.target_columns}
    sample_columns = None
    if spec.sample_submission and Path(spec.sample_submission).is_file():
        sample_columns = list(pd.read_csv(spec.sample_submission, nrows=0).columns)
    return {
        "name": spec.name, "id_column": spec.id_column, "target_columns": list(spec.target_columns),
        "task": spec.task, "metric": spec.metric, "output_names": first_head["output_names"],
        "classes": first_head["output_names"] if spec.task == "multiclass" else None,
        "train_dtypes": train_dtypes, "sample_columns": sample_columns,
    }


def _dataset_metadata(cfg: Config, dataset_id: str | None, title: str | None) -> dict:
    user = os.environ.get("KAGGLE_USERNAME", "your-kaggle-username")
    dataset_id = dataset_id or cfg.package.dataset_id or f"{user}/dontstop-{cfg.experiment}"
    owner, _, slug = dataset_id.partition("/")
    slug = re.sub(r"[^a-z0-9-]+", "-", slug.lower()).strip("-")
    if not owner or not slug:
        raise BundleError(f"dataset id {dataset_id!r} is not of the form <kaggle user>/<slug>")
    slug = (slug + "-bundle")[:50] if len(slug) < 6 else slug[:50]  # Kaggle: slugs of 6 to 50 characters
    title = title or cfg.package.title or f"dontstop {cfg.experiment}"
    title = (title + " bundle")[:50] if len(title) < 6 else title[:50]
    return {"title": title, "id": f"{owner}/{slug}", "licenses": [{"name": cfg.package.license}]}


KERNEL_CELL = """\
!pip install --no-index --no-deps /kaggle/input/{slug}/{wheel}
!python -m dontstop infer --bundle /kaggle/input/{slug} \\
    --test /kaggle/input/<competition>/test.csv \\
    --sample /kaggle/input/<competition>/sample_submission.csv --out submission.csv
"""


def run_package(cfg: Config, out: str | Path, dataset_id: str | None = None, title: str | None = None,
                fp16: bool | None = None, upload: bool = False, log=print) -> dict:
    """Write the bundle folder for `cfg` (an experiment or an ensemble) into `out`."""
    out = Path(out)
    fp16 = cfg.package.fp16 if fp16 is None else fp16
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise BundleError(f"{out} exists and is not a dontstop bundle; choose an empty or new folder")
        shutil.rmtree(out)  # an old bundle is replaced whole: no stale member survives
    names, blend = bundle_members(cfg)
    members, sizes = [], {}
    first_head = None
    for name in names:
        member_cfg, scores = _member_config(cfg, name)
        if scores.get("metric") != cfg.competition.metric:
            raise BundleError(f"member {name!r} is scored with {scores.get('metric')}, the config with "
                              f"{cfg.competition.metric}")
        folds = []
        for k, src in enumerate(_fold_dirs(member_cfg, int(scores["n_folds"]))):
            rel = f"members/{safe_name(name)}/fold{k}"
            files = _copy_fold(src, out / rel, fp16)
            head = read_json(src / HEAD_NAME)
            if first_head is None:
                first_head = head
            elif head["output_names"] != first_head["output_names"]:
                raise BundleError(f"member {name!r} fold {k} predicts {head['output_names']}, the first member "
                                  f"{first_head['output_names']}")
            folds.append({"dir": rel, "files": files})
            for file, info in files.items():
                part = f"members/{name} " + ("weights" if file == WEIGHTS_NAME else "tokenizer + config")
                sizes[part] = sizes.get(part, 0) + info["bytes"]
        members.append({
            "name": name, "folds": folds, "eval_batch_size": member_cfg.train.eval_batch_size,
            "text": {"text_columns": list(member_cfg.competition.text_columns),
                     "text_pair": member_cfg.competition.text_pair, "nan_text": member_cfg.competition.nan_text},
            "cv": scores.get("cv"),
        })
        log(f"{name}: {len(folds)} folds copied{' (fp16 weights)' if fp16 else ''}")
    wheel = build_wheel(out / "wheels")
    sizes[f"wheels/{wheel.name}"] = wheel.stat().st_size
    metadata = _dataset_metadata(cfg, dataset_id, title)
    manifest = {
        "format": BUNDLE_FORMAT, "experiment": cfg.experiment,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "competition": _competition_layout(cfg, first_head), "members": members,
        "blend": blend, "weights_dtype": "float16" if fp16 else "as trained",
        "wheel": f"wheels/{wheel.name}", "dataset_id": metadata["id"],
    }
    write_json(out / "dataset-metadata.json", metadata)
    slug = metadata["id"].split("/")[1]
    write_text(out / "README.md", f"# {metadata['title']}\n\nTrained with dontstop (`{cfg.experiment}`: "
               f"{', '.join(names)}). In an offline Kaggle kernel with this dataset attached:\n\n```\n"
               + KERNEL_CELL.format(slug=slug, wheel=manifest["wheel"]) + "```\n")
    write_json(out / MANIFEST, manifest)  # written last: a bundle without it is unfinished
    total = sum(sizes.values())
    for part, size in sizes.items():
        log(f"  {part:<40} {size / 2**20:10.1f} MiB")
    log(f"  {'total':<40} {total / 2**20:10.1f} MiB -> {out}")
    if upload:
        upload_bundle(out, metadata["id"], log=log)
    else:
        log(f"upload: kaggle datasets create -p {out} --dir-mode zip   (or `version -m ...` for a new version)")
    return manifest


def _kaggle_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    home = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (home / "kaggle.json").is_file() or (home / "access_token").is_file()


def upload_bundle(out: Path, dataset_id: str, log=print) -> bool:
    """Create the Kaggle dataset, or add a version when it exists. Without the kaggle CLI or credentials,
    say how to upload and do nothing."""
    kaggle = shutil.which("kaggle")
    if kaggle is None or not _kaggle_credentials():
        missing = "the kaggle CLI (pip install kaggle)" if kaggle is None else "Kaggle credentials (~/.kaggle/kaggle.json)"
        log(f"not uploaded: {missing} is not available. To upload: kaggle datasets create -p {out} --dir-mode zip")
        return False
    exists = subprocess.run([kaggle, "datasets", "status", dataset_id], capture_output=True, text=True).returncode == 0
    if exists:
        cmd = [kaggle, "datasets", "version", "-p", str(out), "--dir-mode", "zip", "-m", "dontstop package"]
    else:
        cmd = [kaggle, "datasets", "create", "-p", str(out), "--dir-mode", "zip"]
    log("running: " + " ".join(cmd[1:]))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BundleError(f"kaggle {' '.join(cmd[1:3])} failed: {(result.stderr or result.stdout).strip()[-1000:]}")
    log(result.stdout.strip())
    return True


def read_manifest(bundle: Path, verify: bool = True) -> dict:
    """The bundle's manifest, after checking that every fold file is there with its recorded size and hash."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a dontstop bundle ({MANIFEST} is missing); make one with "
                          f"`python -m dontstop package CONFIG --out DIR`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} has bundle format {manifest.get('format')}; this dontstop reads {BUNDLE_FORMAT}")
    for member in manifest["members"]:
        for k, fold in enumerate(member["folds"]):
            fold_dir = bundle / fold["dir"]
            if not fold_dir.is_dir():
                raise BundleError(f"member {member['name']!r}: fold {k} is missing ({fold_dir} does not exist)")
            for name, info in fold["files"].items():
                file = fold_dir / name
                if not file.is_file():
                    raise BundleError(f"member {member['name']!r} fold {k}: {file} is missing")
                if file.stat().st_size != info["bytes"] or (verify and file_sha256(file) != info["sha256"]):
                    raise BundleError(f"member {member['name']!r} fold {k}: {file} is corrupt (size or sha256 "
                                      f"differs from {MANIFEST}); re-download or re-package the bundle")
    return manifest
