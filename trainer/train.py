"""Two-stage multi-task training (the report's recipe) through accelerate.

Stage 1 trains on retrieval data only; stage 2 on every kind with retrieval share `eta`. Each step draws one
dataset's batch, computes its kind's loss (InfoNCE with query-query negatives, CoSENT, or masked InfoNCE)
and steps AdamW under a warm-up + cosine/linear schedule. Run it as `trainer run CONFIG` on one process, or
under `accelerate launch` / `torchrun` (DDP, FSDP, DeepSpeed: see trainer/configs/) for many GPUs.
Checkpoints (accelerate's save_state, plus sampler position, scheduler and step) resume exactly; the stage-end
weights and the export are gathered in full under FSDP and DeepSpeed.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from datakit.manifest import load as load_manifest
from datakit.manifest_schema import Manifest
from trainer.config import StageConfig, TrainConfig, TrainConfigError, check_paths
from trainer.card import RunFacts
from trainer.data import Batch, BatchSampler, open_shards
from trainer.export import prompts_from_tables
from trainer.losses import cosent, info_nce, masked_info_nce
from trainer.model import EmbeddingModel
from trainer.packing import Encoded, default_overhead, encode_texts


def _inputs(model, batch: Batch, cfg: TrainConfig, rows_per_chunk: int = 0) -> tuple[Encoded, Encoded]:
    """The batch's query side and document side (positives, then negatives), tokenized into chunks."""
    d = cfg.data
    docs = batch.docs + [n for negs in batch.negatives for n in negs]
    free, overhead = cfg.model.padding_free, default_overhead(model.device)
    packed = free and getattr(model, "varlen", False)
    q = encode_texts(model.tokenizer, batch.queries, d.query_max_length, model.device, free, overhead, rows_per_chunk,
                     packed)
    p = encode_texts(model.tokenizer, docs, d.doc_max_length if batch.kind == "retrieval" else d.query_max_length,
                     model.device, free, overhead, rows_per_chunk, packed)
    return q, p


def _embed(model, enc: Encoded) -> torch.Tensor:
    return enc.restore(torch.cat([model(**chunk) for chunk in enc.chunks]))


def batch_loss(model, batch: Batch, cfg: TrainConfig, prepared=None) -> tuple[torch.Tensor, int, int]:
    """The loss of one batch by its kind, the real tokens it encoded and the positions it computed."""
    q, p = prepared or _inputs(model, batch, cfg)
    return task_loss(_embed(model, q), _embed(model, p), batch, cfg), q.real + p.real, q.positions + p.positions


def task_loss(qe: torch.Tensor, de: torch.Tensor, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    """The batch's loss from its query-side and document-side embeddings."""
    b = len(batch.queries)
    pos, neg = de[:b], de[b:].reshape(b, -1, de.shape[-1]) if de.shape[0] > b else None
    if batch.kind == "retrieval":
        return info_nce(qe, pos, neg, cfg.tau, cfg.query_negatives)
    if batch.kind == "pair":
        return cosent(qe, pos, torch.tensor(batch.scores, dtype=torch.float32, device=qe.device), cfg.cosent_scale)
    labels = torch.tensor(batch.labels, device=qe.device)
    neg_labels = torch.tensor(batch.negative_labels, device=qe.device) if neg is not None else None
    return masked_info_nce(qe, pos, neg, labels, neg_labels, cfg.tau)


def grad_cache_step(model, batch: Batch, cfg: TrainConfig, backward, no_sync=None,
                    prepared=None) -> tuple[torch.Tensor, int, int]:
    """GradCache (Gao et al. 2021): embed in chunks without a graph, take the loss and its gradient with
    respect to the embeddings, then re-run each chunk with a graph (same RNG, so the same dropout) and push
    the cached gradient through it. Memory is that of one chunk; the gradient is the full batch's.
    Padding-free, each chunk holds texts of similar length, padded to its own longest.

    `no_sync()` (accelerate's, under DDP/FSDP) wraps every chunk's backward but the last, so gradients are
    reduced across processes once per step, not once per chunk."""
    q, p = prepared or _inputs(model, batch, cfg, rows_per_chunk=cfg.grad_cache_chunk)
    raws, states = [], []
    for enc in (q, p):
        parts, rng = [], []
        with torch.no_grad():
            for chunk in enc.chunks:
                rng.append((torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None))
                parts.append(model(**chunk))
        raws.append(torch.cat(parts).detach().requires_grad_())
        states.append(rng)
    loss = task_loss(q.restore(raws[0]), p.restore(raws[1]), batch, cfg)
    loss.backward()
    chunks = []
    for enc, raw, rng in zip((q, p), raws, states):
        offset = 0
        for chunk, state in zip(enc.chunks, rng):
            rows = len(chunk["cu_seqlens"]) - 1 if "cu_seqlens" in chunk else chunk["input_ids"].shape[0]
            chunks.append((chunk, state, raw.grad[offset: offset + rows]))
            offset += rows
    for n, (chunk, state, grad) in enumerate(chunks):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])
        last = n == len(chunks) - 1
        with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
            out = model(**chunk)
            backward(torch.dot(out.flatten(), grad.flatten()))
    return loss.detach(), q.real + p.real, q.positions + p.positions


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


def _save_run_config(cfg: TrainConfig, out: Path) -> None:
    tmp = out / (RUN_CONFIG + ".tmp")
    tmp.write_text(json.dumps(training_values(cfg), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(out / RUN_CONFIG)


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
            _save_run_config(cfg, out)
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
        start, folder = _load_state(acc, ckpt, sampler, scheduler) if self.resume else (0, None)
        if acc.is_main_process and self.started:
            _trim_log(self.log_path, index, start)  # records a killed run wrote after its last checkpoint
            if folder is not None:
                self.log(f"resuming stage {index} at step {start} from {folder}")
        fwd = wrapped if acc.num_processes == 1 else _Forward(wrapped, model)
        self._steps(index, stage, start, sampler, optimizer, scheduler, wrapped, fwd, ckpt)
        self.global_step += stage.steps
        self.facts.steps[index] = stage.steps
        self.full = acc.get_state_dict(wrapped)  # every process takes part: FSDP and DeepSpeed gather the shards
        if acc.is_main_process:
            ckpt.mkdir(parents=True, exist_ok=True)
            _atomic_save(self.full, ckpt / "model.pt")
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
                    _save_state(acc, ckpt, sampler_state, scheduler, step + 1)
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
    return batch, _inputs(model, batch, cfg, rows), sampler.state_dict()


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


def _atomic_save(obj: Any, path: Path) -> None:
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
        raise _write_error(exc, path) from None


def _write_error(exc: BaseException, path: Path) -> OSError:
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


def _save_state(acc, ckpt: Path, sampler_state: dict, scheduler, step: int) -> None:
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
        raise _write_error(exc, folder) from None
    if acc.is_main_process:
        _atomic_save({"sampler": sampler_state, "scheduler": scheduler.state_dict(), "step": step,
                      "world_size": acc.num_processes}, folder / "trainer.pt")
        tmp = ckpt / "latest.tmp"
        tmp.write_text(folder.name + "\n")
        tmp.replace(ckpt / "latest")
        for old in ckpt.glob("state-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _trim_log(path: Path, stage: int, step: int) -> None:
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


def _load_state(acc, ckpt: Path, sampler: BatchSampler, scheduler) -> tuple[int, Path | None]:
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


def _full_model(acc, full: dict[str, Any], model: EmbeddingModel, cfg: TrainConfig) -> EmbeddingModel:
    """The model to export. Under FSDP or DeepSpeed the parameters are sharded over the processes: the last
    stage's gathered state (`full`) is loaded into a fresh copy on the main process's CPU."""
    from accelerate.utils import DistributedType

    if acc.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED) or not acc.is_main_process:
        return model
    copy = EmbeddingModel(cfg.model, device="cpu", training=True)
    copy.load_state_dict(full)
    return copy
