"""What makes a run resumable and its writes safe: the training values a resume must match (`run_config.json`),
accelerate's checkpoint plus the sampler, scheduler and step (`save_state` / `load_state`, `latest` written last),
torch.save through a temporary file with one OSError for a full disk, and the log cut back to a checkpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig, TrainConfigError
from trainer.data import BatchSampler


RUN_CONFIG = "run_config.json"


# what a resumed run may change: where it logs and reports, not what it trains
_NOT_TRAINING = ("output_dir", "log_every", "save_every", "eval")


class ConfigChanged(TrainConfigError):
    """A run is resumed with a config whose training values differ from the checkpoints' run."""


def training_values(cfg: TrainConfig) -> dict[str, Any]:
    """The config's values that decide what is trained, flattened to dotted keys."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        else:
            out[prefix] = value

    walk("", {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_TRAINING})
    return out


def check_resumable(cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume checkpoints under a config whose training values changed (naming the keys)."""
    path = out / RUN_CONFIG
    if not path.exists():
        return  # a run folder written before run_config.json existed: nothing to compare with
    saved = json.loads(path.read_text(encoding="utf-8"))
    now = training_values(cfg)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise ConfigChanged(f"{out}: its checkpoints were trained with other values of {shown}{more}; resuming "
                            f"would mix two runs. Run again with --restart to start over in this folder, or give "
                            f"another --out")


def save_run_config(cfg: TrainConfig, out: Path) -> None:
    tmp = out / (RUN_CONFIG + ".tmp")
    tmp.write_text(json.dumps(training_values(cfg), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(out / RUN_CONFIG)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file renamed into place. A write that fails (a full disk shows as torch's
    `RuntimeError: ... unexpected pos` or `PytorchStreamWriter failed writing file`) removes the partial file and
    is an OSError naming the path (one line at the CLI). `EMBEDKIT_FAULT=save:ENOSPC` injects that failure
    (tests: a disk cannot be filled here)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if os.environ.get("EMBEDKIT_FAULT") == "save:ENOSPC":
            tmp.write_bytes(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 512 vs 448 (injected)")
        torch.save(obj, tmp)
        tmp.replace(path)
    except (RuntimeError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path) from None


def write_error(exc: BaseException, path: Path) -> OSError:
    """One OSError for a failed write: ENOSPC when the disk is (nearly) full, else the error as it was."""
    import errno
    import shutil

    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or str(exc), str(path))
    try:
        full = shutil.disk_usage(path.parent).free < 256 * 2**20
    except OSError:
        full = False
    if full or "unexpected pos" in str(exc) or "failed writing" in str(exc):
        return OSError(errno.ENOSPC, f"no space left on the device while writing a checkpoint ({str(exc)[:80]})",
                       str(path))
    return OSError(errno.EIO, f"writing failed: {str(exc)[:200]}", str(path))


def save_state(acc, ckpt: Path, sampler_state: dict, scheduler, step: int) -> None:
    """A resumable checkpoint: model, optimizer and every process's RNG through accelerate's `save_state` (so
    FSDP and DeepSpeed save their shards their own way), then the sampler position, scheduler and step. The
    `latest` file names it only once complete, so a kill at any moment leaves the previous one usable."""
    import shutil

    folder = ckpt / f"state-{step}"
    try:
        acc.save_state(str(folder))
    except (RuntimeError, OSError) as exc:  # a full disk: the partial checkpoint goes, `latest` still names the last
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise write_error(exc, folder) from None
    if acc.is_main_process:
        atomic_save({"sampler": sampler_state, "scheduler": scheduler.state_dict(), "step": step,
                      "world_size": acc.num_processes}, folder / "trainer.pt")
        tmp = ckpt / "latest.tmp"
        tmp.write_text(folder.name + "\n")
        tmp.replace(ckpt / "latest")
        for old in ckpt.glob("state-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def trim_log(path: Path, stage: int, step: int) -> None:
    """Keep the log records from before (stage, step): a resumed run writes the later ones again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line) if line.strip() else None
        if rec is not None and (rec.get("stage", 0), rec.get("step", 0)) <= (stage, step):
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)


def load_state(acc, ckpt: Path, sampler: BatchSampler, scheduler) -> tuple[int, Path | None]:
    """Restore the checkpoint `latest` names (if any); return the step to resume at and its folder."""
    if not (ckpt / "latest").exists():
        return 0, None
    folder = ckpt / (ckpt / "latest").read_text().strip()
    meta = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False)
    if meta["world_size"] != acc.num_processes:
        raise ValueError(f"{folder}: saved by {meta['world_size']} processes, resumed by {acc.num_processes}; "
                         f"resume with the same number (optimizer shards and RNG states are per process)")
    acc.load_state(str(folder))
    scheduler.load_state_dict(meta["scheduler"])
    sampler.load_state_dict(meta["sampler"])
    return int(meta["step"]), folder
