"""What the benchmark scripts share: the device and its precision, versions, step timing, the shared-data path,
dontstop's MLM training step, and writing `bench/results/<name>.json`.

Every result holds `name`, `metric`, `ours`, `baseline`, `ratio` (oriented so larger is better), `target`,
`met`, `device`, `command`, `date` and `versions`; scripts add their own keys. Set DONTSTOP_SHARED_DATA to read
the real text from elsewhere than ../shared/data, and DONTSTOP_BENCH_RESULTS to write results elsewhere than
bench/results (smoke runs write to /tmp so they never replace a real result).
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("DONTSTOP_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
RESULTS = Path(os.environ.get("DONTSTOP_BENCH_RESULTS", HERE / "results"))


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precision(device: torch.device) -> str:
    """bf16 autocast on a GPU that has it, fp32 elsewhere (autocast on CPU only slows these models down)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores, {model})"


def host_load() -> float | None:
    """1-minute load average: on a shared CPU box it says how much the timings were disturbed."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def versions() -> dict[str, str]:
    from dontstop.io import package_versions

    found = {"python": platform.python_version(), **package_versions()}
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
    return found


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(step, n_steps: int, warmup: int, device: torch.device) -> list[float]:
    """Run `step(i)` warmup + n_steps times; wall seconds of the last n_steps (device synchronised)."""
    times = []
    for i in range(warmup + n_steps):
        sync(device)
        start = time.perf_counter()
        step(i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return float(statistics.median(values))


def make_accelerator(mixed_precision: str):
    """dontstop's own Accelerator (dontstop.runtime) for a precision: "bf16" / "fp16" / "fp32"."""
    from dontstop.config import Config
    from dontstop.runtime import make_accelerator as dontstop_accelerator

    cfg = Config()
    cfg.train.mixed_precision = "no" if mixed_precision == "fp32" else mixed_precision
    return dontstop_accelerator(cfg)


def mlm_step(net, optimizer, accelerator, batch: dict, max_grad_norm: float = 1.0) -> None:
    """One optimizer step of `dontstop mlm` (mlm._train_mlm without accumulation and schedule): the sparse
    head's summed loss over masked tokens / their count, backward, clipping, step."""
    with accelerator.autocast():
        loss_sum, _, count = net(**batch)
    accelerator.backward(loss_sum / count.clamp(min=1))
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(net.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trainer_timer(device: torch.device):
    """A TrainerCallback recording each optimizer step's begin and end (synchronised): `step_times` is
    begin -> end (forward, backward, step), `intervals` is end -> end (also fetching and collating the batch)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begins, self.ends = [], []

        def on_train_begin(self, args, state, control, **kwargs):
            sync(device)
            self.ends.append(time.perf_counter())  # the first interval starts here

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.ends.append(time.perf_counter())

        @property
        def step_times(self) -> list[float]:
            return [end - begin for begin, end in zip(self.begins, self.ends[1:])]

        @property
        def intervals(self) -> list[float]:
            return [b - a for a, b in zip(self.ends, self.ends[1:])]

    return StepTimer()


def command(script: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{Path(script).name}", *map(shlex.quote, args)])


def make_result(name: str, metric: str, ours, baseline, target: float, script: str, argv, device: torch.device,
                ratio: float | None = None, **extra) -> dict:
    """The common result keys; `ratio` defaults to ours / baseline (pass it when smaller is better)."""
    if ratio is None and ours is not None and baseline:
        ratio = ours / baseline
    return {
        "name": name, "metric": metric, "ours": ours, "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3), "target": target,
        "met": None if ratio is None else bool(ratio >= target),
        **extra,
        "device": describe_device(device), "host_load_1m": host_load() if device.type == "cpu" else None,
        "versions": versions(), "command": command(script, argv), "date": dt.date.today().isoformat(),
    }


def write_result(result: dict) -> Path:
    """Atomically (a killed run leaves no half-written result) to RESULTS/<name>.json."""
    from dontstop.io import write_json

    out = RESULTS / f"{result['name']}.json"
    write_json(out, result)
    return out
