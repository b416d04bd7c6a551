"""Two-stage multi-task training (the report's recipe) through accelerate.

Stage 1 trains on retrieval data only; stage 2 on every kind with retrieval share `eta`. Each step draws one
dataset's batch, computes its kind's loss (InfoNCE with query-query negatives, CoSENT, or masked InfoNCE)
and steps AdamW under a warm-up + cosine/linear schedule. Run it as `trainer run CONFIG` on one process, or
under `accelerate launch` / `torchrun` (DDP, FSDP, DeepSpeed: see trainer/configs/) for many GPUs.
Checkpoints (accelerate's save_state, plus sampler position, scheduler and step) resume exactly; the stage-end
weights and the export are gathered in full under FSDP and DeepSpeed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from datakit.manifest import load as load_manifest
from datakit.manifest_schema import Manifest
from trainer.config import StageConfig, TrainConfig, check_paths
from trainer.card import RunFacts
from trainer.data import BatchSampler, open_shards
from trainer.export import prompts_from_tables
from trainer.model import EmbeddingModel
from trainer.packing import Encoded
from trainer.checkpoint import atomic_save, check_resumable, load_state, save_run_config, save_state, trim_log
from trainer.step_loss import batch_loss, encode_batch, grad_cache_step


def _scheduler(optimizer, stage: StageConfig):
    from transformers import get_scheduler

    return get_scheduler(stage.schedule, optimizer, num_warmup_steps=min(stage.warmup_steps, stage.steps),
                         num_training_steps=stage.steps)


def _accelerator(accelerator_cls, mixed_precision: str):
    """An Accelerator with this run's precision. Accelerate keeps its state per process, so a second run in the
    same single process (a notebook, a test, an experiment) with another precision would be refused: reset it."""
    from accelerate.state import AcceleratorState

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        AcceleratorState._reset_state()
    # without cpu=True accelerate ignores a torchrun launch on a machine without CUDA: every process would
    # train alone and all of them write the same files
    acc = accelerator_cls(mixed_precision=mixed_precision, cpu=world > 1 and not torch.cuda.is_available())
    if acc.num_processes != world:
        raise RuntimeError(f"launched as {world} processes (WORLD_SIZE) but accelerate runs {acc.num_processes}")
    return acc


def train(cfg: TrainConfig, resume: bool = True, log=print, progress: bool = False) -> Path:
    """Train every stage; return the folder of the exported SentenceTransformer model. `log` gets every
    record of log.jsonl and the run's messages; `progress` shows a bar per stage (step, ETA, losses, tokens/s,
    pad_fraction). The output folder is locked for the whole run (by the main process of a multi-process
    launch): a second run into it fails at once, naming the first."""
    check_paths(cfg)
    if os.environ.get("RANK", "0") != "0":
        return _train(cfg, resume, log, progress)
    from embedkit.folderlock import FolderLock
    from trainer.folders import claim_run

    claim_run(cfg.output_dir)  # type: ignore[arg-type]  # never a folder holding files the trainer did not write
    with FolderLock(cfg.output_dir, hint="give this run another output folder (--out)"):  # type: ignore[arg-type]
        return _train(cfg, resume, log, progress)


def _train(cfg: TrainConfig, resume: bool, log, progress: bool) -> Path:
    run = _Run(cfg, resume, log, progress)
    for index, stage in enumerate(cfg.stages, start=1):
        run.stage(index, stage)
    return run.finish()


class _Run:
    """One training run: checked and set up before the model loads (`__init__`), then each stage (`stage`, its
    steps in `_steps`), then the export, the held-out table and the end (`finish`)."""

    def __init__(self, cfg: TrainConfig, resume: bool, log, progress: bool):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        self.cfg, self.resume, self.log, self.progress = cfg, resume, log, progress
        acc = self.acc = _accelerator(Accelerator, _mixed_precision(cfg.mixed_precision))
        if cfg.grad_cache_chunk and acc.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError("grad_cache_chunk: GradCache needs one optimizer step per batch, and DeepSpeed steps "
                             "on every backward; use FSDP (trainer/configs/fsdp.yaml) or DDP with GradCache")
        sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if sharded and cfg.eval is not None and cfg.eval.keep_best:
            raise ValueError("eval.keep_best: exporting the best model mid-run is not supported with sharded "
                             "weights (FSDP, DeepSpeed) yet; drop keep_best (scores still go to log.jsonl) or "
                             "train with DDP")
        self.tables = open_shards(cfg.data.shards)  # checked against the manifest before the model loads
        self.prompts = prompts_from_tables(self.tables, cfg.data.query_template)  # what the export will carry
        self.manifest = load_manifest(cfg.data.shards)  # the corpus's lineage and overlap, for the model card
        self.facts = RunFacts(processes=acc.num_processes, precision=_mixed_precision(cfg.mixed_precision))
        self.t_run = time.time()
        out = self.out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.started = resume and any((out / f"stage{i}" / name).exists()
                                      for i in range(1, len(cfg.stages) + 1) for name in ("done", "latest"))
        if self.started:
            check_resumable(cfg, out)  # before the model loads
        self.log_path = out / "log.jsonl"
        self.sinks = _metric_sinks(out, cfg) if acc.is_main_process else []
        for index, stage in enumerate(cfg.stages, start=1):  # every stage can be fed, known before the model loads
            if stage.steps:
                BatchSampler(self.tables, cfg.data, stage=index, world_size=acc.num_processes,
                             rank=acc.process_index)
        # the task file is read (and checked) before the model loads
        self.evaluator = _evaluator(cfg, out, acc, self.emit, self.prompts) if cfg.eval is not None else None
        set_seed(cfg.seed)  # the same initial weights (LoRA, new heads) on every process
        self.model = EmbeddingModel(cfg.model, device=acc.device, training=True)
        set_seed(cfg.seed + acc.process_index)  # then each process its own dropout stream
        if acc.is_main_process and not self.started:
            self.log_path.unlink(missing_ok=True)  # a fresh run's log holds only its own records
        if acc.is_main_process:
            save_run_config(cfg, out)
        if self.evaluator is not None and cfg.eval.at_start and not self.started:
            self.evaluator(self.model, self.model, 0, 0, 0, self.export_to)
        self.global_step, self.full = 0, None
        # length-grouped chunks are planned per process (GradCache's are equal in number). Packed varlen chunks
        # are too, but every process takes part regardless: a rank whose varlen probe failed would otherwise hang
        self.same_counts = _SameChunkCounts() if acc.num_processes > 1 and cfg.model.padding_free and \
            not cfg.grad_cache_chunk else None

    def emit(self, rec: dict[str, Any], flat: dict[str, float], step: int) -> None:
        """A record to log.jsonl, the log callback and the metric sinks (main process only)."""
        if self.acc.is_main_process:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            self.log(rec)
            for sink in self.sinks:
                sink(flat, step)

    def export_to(self, folder: Path, model: EmbeddingModel | None = None) -> Path:
        return _export(model or self.model, folder, self.cfg, self.prompts, self.manifest, self.facts)

    def stage(self, index: int, stage: StageConfig) -> None:
        """Train stage `index` (skipped when a resumed run finished it), save its weights, score it."""
        acc, cfg, model = self.acc, self.cfg, self.model
        ckpt = self.out / f"stage{index}"
        if stage.steps == 0:
            self.facts.steps[index] = 0
            return
        if self.resume and (ckpt / "done").exists():
            model.load_state_dict(torch.load(ckpt / "model.pt", map_location=acc.device))
            self.global_step += stage.steps
            self.facts.steps[index] = stage.steps
            if acc.is_main_process:
                self.log(f"stage {index} already done ({ckpt / 'model.pt'}): skipped")
            return
        sampler = BatchSampler(self.tables, cfg.data, stage=index, world_size=acc.num_processes,
                               rank=acc.process_index)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=stage.lr,
                                      weight_decay=cfg.weight_decay, fused=_fused(acc))
        scheduler = _scheduler(optimizer, stage)
        acc.free_memory()  # forget the previous stage's optimizer: save_state saves what was prepared
        wrapped, optimizer = acc.prepare(model, optimizer)
        start, folder = load_state(acc, ckpt, sampler, scheduler) if self.resume else (0, None)
        if acc.is_main_process and self.started:
            trim_log(self.log_path, index, start)  # records a killed run wrote after its last checkpoint
            if folder is not None:
                self.log(f"resuming stage {index} at step {start} from {folder}")
        fwd = wrapped if acc.num_processes == 1 else _Forward(wrapped, model)
        self._steps(index, stage, start, sampler, optimizer, scheduler, wrapped, fwd, ckpt)
        self.global_step += stage.steps
        self.facts.steps[index] = stage.steps
        self.full = acc.get_state_dict(wrapped)  # every process takes part: FSDP and DeepSpeed gather the shards
        if acc.is_main_process:
            ckpt.mkdir(parents=True, exist_ok=True)
            atomic_save(self.full, ckpt / "model.pt")
            (ckpt / "done").write_text("ok\n")
        acc.wait_for_everyone()
        if self.evaluator is not None:
            self.evaluator(model, fwd, index, stage.steps, self.global_step, self.export_to)

    def _steps(self, index: int, stage: StageConfig, start: int, sampler: BatchSampler, optimizer, scheduler,
               wrapped, fwd, ckpt: Path) -> None:
        """The optimizer steps of one stage from `start`: log records every `log_every`, checkpoints every
        `save_every`, held-out scores every `eval.every`."""
        acc, cfg = self.acc, self.cfg
        rows = cfg.grad_cache_chunk
        window: dict[str, list[torch.Tensor]] = {}
        counts, t0 = [0, 0], time.time()  # real tokens, positions computed
        stage_t0 = time.time()  # (a resumed stage counts from the resume)
        bar = _progress(index, start, stage.steps) if self.progress and acc.is_main_process else None
        wrapped.train()
        # the next step's batch is drawn and tokenized in a thread while this one computes
        prefetch = _Prefetch(lambda: _draw(sampler, fwd, cfg, rows), stage.steps - start)
        try:
            for step in range(start, stage.steps):
                batch, prepared, sampler_state = prefetch.get()
                if self.same_counts is not None:
                    self.same_counts(prepared)
                if cfg.grad_cache_chunk:
                    loss, real, positions = grad_cache_step(fwd, batch, cfg, acc.backward,
                                                            lambda: acc.no_sync(wrapped), prepared)
                else:
                    loss, real, positions = batch_loss(fwd, batch, cfg, prepared)
                    acc.backward(loss)
                if cfg.max_grad_norm:
                    acc.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                counts[0] += real
                counts[1] += positions
                window.setdefault(f"{batch.kind}/{batch.dataset}", []).append(loss.detach().float())
                if bar is not None:
                    bar.update(1)
                if (step + 1) % cfg.log_every == 0 or step + 1 == stage.steps:
                    losses, (real, positions) = _across_processes(acc, window, counts)
                    self.facts.tokens += real
                    rec = {"stage": index, "step": step + 1, "lr": scheduler.get_last_lr()[0],
                           "tokens_per_s": round(real / max(time.time() - t0, 1e-9), 1),
                           "stage_s": round(time.time() - stage_t0, 1),  # seconds of this stage's steps so far
                           "pad_fraction": round(1 - real / max(positions, 1), 4), "loss": losses}
                    if acc.device.type == "cuda":  # the main process's peak since the run started
                        rec["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(acc.device) / 2**30, 2)
                    self.emit(rec, {"lr": rec["lr"], "tokens_per_s": rec["tokens_per_s"],
                                    "pad_fraction": rec["pad_fraction"],
                                    **{f"loss/{k}": v for k, v in rec["loss"].items()}}, self.global_step + step + 1)
                    if bar is not None:
                        bar.set_postfix_str(_postfix(rec), refresh=True)
                    window, counts, t0 = {}, [0, 0], time.time()
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < stage.steps:
                    save_state(acc, ckpt, sampler_state, scheduler, step + 1)
                if self.evaluator is not None and cfg.eval.every and (step + 1) % cfg.eval.every == 0 \
                        and step + 1 < stage.steps:
                    prefetch.wait()  # the tokenizer is not safe to share between threads
                    self.evaluator(self.model, fwd, index, step + 1, self.global_step + step + 1, self.export_to)
                    wrapped.train()
        finally:
            prefetch.close()
            if bar is not None:
                bar.close()

    def finish(self) -> Path:
        """Export the trained model (weights gathered in full), print the held-out table, end the run."""
        acc, evaluator = self.acc, self.evaluator
        final = self.out / "model"
        exported = _full_model(acc, self.full, self.model, self.cfg) if self.full is not None else self.model
        if acc.is_main_process:
            self.facts.seconds = time.time() - self.t_run
            self.facts.scores = evaluator.last if evaluator is not None else []
            self.export_to(final, exported)
            if evaluator is not None and evaluator.history:
                self.log("eval (main score per task):\n" + evaluator.table())
                side_by_side, worse = evaluator.before_after()
                if side_by_side:
                    self.log("held-out scores before and after training:\n" + side_by_side)
                for warning in worse:
                    self.log(f"warning: {warning}")
        acc.wait_for_everyone()
        acc.end_training()
        return final


def _fused(acc) -> bool:
    """Fused AdamW (one kernel for all parameters) on CUDA; DeepSpeed brings its own optimizer step."""
    from accelerate.utils import DistributedType

    return acc.device.type == "cuda" and acc.distributed_type != DistributedType.DEEPSPEED


def _draw(sampler: BatchSampler, model, cfg: TrainConfig, rows: int):
    """The next batch, tokenized, and the sampler's state after it (what a checkpoint after it saves)."""
    batch = next(sampler)
    return batch, encode_batch(model, batch, cfg, rows), sampler.state_dict()


class _Prefetch:
    """Runs `draw` `count` times in one background thread, one call ahead of the consumer."""

    def __init__(self, draw, count: int):
        from concurrent.futures import ThreadPoolExecutor

        self.draw, self.left = draw, count
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batches")
        self.future = self._submit()

    def _submit(self):
        if self.left <= 0:
            return None
        self.left -= 1
        return self.pool.submit(self.draw)

    def get(self):
        item = self.future.result()
        self.future = self._submit()
        return item

    def wait(self) -> None:
        """Until the call in flight is done (its result stays for `get`)."""
        if self.future is not None:
            self.future.exception()

    def close(self) -> None:
        self.left = 0
        self.pool.shutdown(wait=True, cancel_futures=True)


def _progress(stage: int, start: int, steps: int):
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc=f"stage {stage}", unit="step", dynamic_ncols=True)


def _postfix(rec: dict[str, Any]) -> str:
    losses = " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in rec["loss"].items())
    return f"{losses} | {rec['tokens_per_s']:,.0f} tok/s | pad {rec['pad_fraction']:.0%}"


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _export(model, folder: Path, cfg: TrainConfig, prompts: dict[str, str], manifest: Manifest,
            facts: RunFacts) -> Path:
    from trainer.export import export

    return export(model, folder, cfg, prompts, manifest, facts)


def _evaluator(cfg: TrainConfig, out: Path, acc, emit, prompts: dict[str, str]):
    """The `eval:` section's evaluator; its scores go to log.jsonl and the sinks as eval/{task}/{metric}."""
    try:
        from trainer.eval.training import TrainingEval
    except ImportError as exc:
        raise ImportError(f"the config's eval: section needs the eval stack (mteb, datakit): {exc}") from None
    def log_eval(rec: dict[str, Any]) -> None:
        emit(rec, {f"eval/{task}": v for task, v in rec["eval"].items()}, rec["global_step"])

    return TrainingEval(cfg.eval, out, prompts, cfg.data.doc_max_length, acc.is_main_process, log=log_eval,
                        query_template=cfg.data.query_template)


def _metric_sinks(out: Path, cfg: TrainConfig) -> list:
    """Writers for tensorboard (when installed) and wandb (when installed and WANDB_PROJECT is set)."""
    import os

    sinks = []
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
        sinks.append(lambda m, step: [writer.add_scalar(k, v, step) for k, v in m.items()] and writer.flush())
    except ImportError:
        pass
    if os.environ.get("WANDB_PROJECT"):
        try:
            import wandb

            run = wandb.init(project=os.environ["WANDB_PROJECT"], config=cfg.model_dump())
            sinks.append(lambda m, step: run.log(m, step=step))
        except ImportError:
            pass
    return sinks


class _SameChunkCounts:
    """Makes every process run as many forward calls in a step as the one with the most chunks: FSDP gathers
    the weights in each call and DDP broadcasts buffers, so unequal counts hang. One all-reduce of two integers
    per step, over gloo on the CPU (no device sync)."""

    def __init__(self):
        import torch.distributed as dist

        self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def __call__(self, encoded: tuple[Encoded, ...]) -> None:
        import torch.distributed as dist

        counts = torch.tensor([len(e.chunks) for e in encoded], dtype=torch.int64)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=self.group)
        for enc, count in zip(encoded, counts.tolist()):
            enc.split_to(count)


class _Forward:
    """Forward through the DDP wrapper (so gradients sync), tokenise with the plain model."""

    def __init__(self, wrapped, model):
        self.wrapped, self.model = wrapped, model

    def tokenize(self, texts, max_length):
        return self.model.tokenize(texts, max_length)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def device(self):
        return self.model.device

    def __call__(self, **kw):
        return self.wrapped(**kw)


def _across_processes(acc, window: dict[str, list[torch.Tensor]],
                      counts: list[int]) -> tuple[dict[str, float], list[int]]:
    """The logged losses averaged over the processes (each holds the loss of its part of the batch), the
    counts (tokens, positions) summed. The loss reaches the host here only, not at every step. Every process
    logs the same datasets in the same order: the plan is shared."""
    means = {k: torch.stack(v).mean() for k, v in window.items()}
    if acc.num_processes > 1:
        stacked = torch.stack([*(v.to(acc.device, torch.float64) for v in means.values()),
                               *(torch.tensor(float(c), dtype=torch.float64, device=acc.device) for c in counts)])
        stacked = acc.reduce(stacked, "sum")
        means = {k: stacked[i] / acc.num_processes for i, k in enumerate(means)}
        counts = [int(c) for c in stacked[len(means):].tolist()]
    return {k: round(float(v), 5) for k, v in means.items()}, counts


def _full_model(acc, full: dict[str, Any], model: EmbeddingModel, cfg: TrainConfig) -> EmbeddingModel:
    """The model to export. Under FSDP or DeepSpeed the parameters are sharded over the processes: the last
    stage's gathered state (`full`) is loaded into a fresh copy on the main process's CPU."""
    from accelerate.utils import DistributedType

    if acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED) or not acc.is_main_process:
        return model
    copy = EmbeddingModel(cfg.model, device="cpu", training=True)
    copy.load_state_dict(full)
    return copy
