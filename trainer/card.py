"""The model card and mteb metadata of an exported model, derived from what the trainer knows: the base model, the
training run, and the corpus's manifest (its lineage and benchmark overlap, through `datakit.card`).

- `README.md`: a Hugging Face model card (huggingface_hub's ModelCard; the scores of the last evaluation run during
  training as its `model-index`, written by huggingface_hub's EvalResult), with the training setting, the corpus lineage and one row per benchmark task the corpus was checked
  against (or the plain statement that it never was).
- `model_meta.json`: mteb's `ModelMeta` (loadable with `ModelMeta.model_validate_json_resolved`), whose
  `training_datasets` is derived from the corpus, never typed: the MTEB tasks its sources declare, and those whose
  evaluation texts it still holds. `training_datasets.json` says why each is there and how many records.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datakit.card import lineage_sections, overlap, overlap_section, records_per_dataset, training_datasets, typed
from datakit.manifest_schema import Manifest
from trainer.config import TrainConfig

CARD = "README.md"
META = "model_meta.json"
# the offline aliases' hub names and licenses (their packages ship the weights, not a model card)
KNOWN_BASES = {"embedded-minilm": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
               "embedded-smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


@dataclass
class RunFacts:
    """What a training run did, for the card (filled in as it goes)."""

    processes: int = 1
    precision: str = "no"
    seconds: float = 0.0
    tokens: int = 0  # real (non-padding) tokens embedded
    steps: dict[int, int] = field(default_factory=dict)  # stage -> steps trained
    # the last evaluation: [{task, type, metric, value, split}]
    scores: list[dict[str, Any]] = field(default_factory=list)


def base_model(cfg: TrainConfig) -> tuple[str, str | None, str]:
    """(base model name, its license or None, a note when its metadata could not be read offline)."""
    name = cfg.model.name_or_path
    if name in KNOWN_BASES:
        return (*KNOWN_BASES[name], "")
    folder = Path(name)
    card_path = folder / CARD if folder.is_dir() else None
    if card_path is not None and card_path.is_file():
        from huggingface_hub import ModelCard

        data = ModelCard.load(card_path).data
        base = data.base_model if isinstance(data.base_model, str) else name
        return base or name, data.license, ""
    if folder.is_dir():
        return name, None, "the base model's folder has no model card: its license is not known here"
    try:  # a hub id: its card, from the local cache only (the card must be writable offline)
        from huggingface_hub import ModelCard, hf_hub_download

        data = ModelCard.load(hf_hub_download(name, CARD, local_files_only=True)).data
        return name, data.license, ""
    except Exception:  # noqa: BLE001 - not cached, no network: say so
        return name, None, f"the metadata of {name} could not be read offline (no cached model card): its license " \
                           "is not given here"


def model_meta(name: str, revision: str, cfg: TrainConfig, manifest: Manifest, n_parameters: int,
               embed_dim: int, prompts: dict[str, str]) -> dict[str, Any]:
    """mteb's ModelMeta fields for the exported model (the JSON `ModelMeta.to_dict()` writes)."""
    base, license_, _ = base_model(cfg)
    return {
        "name": name, "revision": revision, "release_date": dt.date.today().isoformat(), "languages": None,
        "loader": None, "n_parameters": n_parameters, "n_embedding_parameters": None,
        "memory_usage_mb": round(n_parameters * 4 / 2**20, 1), "max_tokens": cfg.data.doc_max_length,
        "embed_dim": embed_dim, "license": license_, "open_weights": True, "public_training_code": None,
        "public_training_data": manifest.recipe.path or manifest.recipe.name,
        "framework": ["Sentence Transformers", "PyTorch"], "reference": None, "similarity_fn_name": "cosine",
        "use_instructions": bool(prompts), "training_datasets": sorted(training_datasets(manifest)),
        "adapted_from": base, "superseded_by": None, "modalities": ["text"], "citation": None, "contacts": None,
    }


def write_cards(folder: Path, cfg: TrainConfig, manifest: Manifest | dict[str, Any], facts: RunFacts,
                n_parameters: int, embed_dim: int, prompts: dict[str, str], name: str, revision: str) -> None:
    """Write README.md, model_meta.json and training_datasets.json into an exported model folder."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    manifest = typed(manifest)

    base, license_, note = base_model(cfg)
    derived = training_datasets(manifest)
    meta = model_meta(name, revision, cfg, manifest, n_parameters, embed_dim, prompts)
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (folder / "training_datasets.json").write_text(json.dumps(derived, indent=2) + "\n", encoding="utf-8")
    hf_sets = sorted({spec["hf"]["path"] for spec in _origin_inputs(manifest).values()
                      if isinstance(spec, dict) and isinstance(spec.get("hf"), dict)})
    results = [EvalResult(task_type=s["type"], dataset_type=s["task"], dataset_name=s["task"], dataset_split=s["split"],
                          metric_type=s["metric"], metric_value=round(float(s["value"]), 6)) for s in facts.scores]
    data = ModelCardData(library_name="sentence-transformers", base_model=base, pipeline_tag="sentence-similarity",
                         tags=["sentence-transformers", "feature-extraction", "embedkit"], license=license_,
                         datasets=hf_sets or None, model_name=name, eval_results=results or None)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{_body(name, base, note, cfg, manifest, facts, derived)}")
    card.save(folder / CARD)


def _origin_inputs(manifest: Manifest) -> dict[str, Any]:
    from datakit.card import manifest_chain

    return list(manifest_chain(manifest))[-1].inputs


def _body(name: str, base: str, note: str, cfg: TrainConfig, manifest: Manifest, facts: RunFacts,
          derived: dict[str, dict[str, Any]]) -> str:
    d = cfg.data
    stages = "\n".join(f"| {i} | {'retrieval only' if i == 1 else f'all kinds, retrieval share eta {d.eta}'} | "
                       f"{facts.steps.get(i, s.steps):,} | {s.lr:g} | {s.schedule}, {s.warmup_steps} warm-up |"
                       for i, s in enumerate(cfg.stages, start=1))
    counts = manifest.counts
    per_stage = "\n".join(f"| {ds} | {kind} | {n:,} | {n if kind == 'retrieval' else 0:,} | {n:,} |"
                          for kind, per in counts.items() for ds, n in per.items())
    tasks = "\n".join(f"| {t} | {', '.join(v['from'])} | {v['records']:,} |" for t, v in sorted(derived.items())) or \
        "| (none) | | |"
    total = sum(records_per_dataset(manifest).values())
    scores = "\n".join(f"| {s['task']} | {s['type']} | {s['metric']} | {s['value']:.4f} |" for s in facts.scores)
    recipe = manifest.recipe
    return f"""
# {name}

A sentence-embedding model fine-tuned from [{base}](https://huggingface.co/{base}) with the embedkit trainer, the
QZhou-Embedding recipe (arXiv 2508.21632): {"a decoder switched to bidirectional attention, " if cfg.model.bidirectional
is not False else ""}{cfg.model.pooling} pooling, L2-normalised embeddings, two stages. Load it with
`SentenceTransformer("{name}")`; its prompts (`Instruct: ...\\nQuery: `) are saved with it.
{f"{chr(10)}> Note: {note}.{chr(10)}" if note else ""}
## Training

| stage | data | steps | lr | schedule |
|---|---|---|---|---|
{stages}

- Losses: InfoNCE (tau {cfg.tau}{", with query-query negatives" if cfg.query_negatives else ""}, in-batch and
  {d.negatives} hard negatives) for retrieval; CoSENT (scale {cfg.cosent_scale:g}) for pairs; InfoNCE with
  same-label in-batch negatives masked for classification. Every batch from one dataset.
- Batch per process: {d.batch_size} (pairs {d.pair_batch_size or d.batch_size}); {facts.processes} process(es),
  so a global batch of {d.batch_size * facts.processes}{f"; GradCache chunks of {cfg.grad_cache_chunk}" if
  cfg.grad_cache_chunk else ""}. Lengths: queries {d.query_max_length}, documents {d.doc_max_length} tokens.
- Precision: {facts.precision}; wall time {facts.seconds / 60:.1f} min; {facts.tokens:,} tokens seen.

## Corpus

Recipe `{recipe.name}` (sha256 `{recipe.sha256[:16]}`), built by datakit
{manifest.versions.get('embedkit', '?')}: {total:,} records.

| dataset | kind | records | in stage 1 | in stage 2 |
|---|---|---|---|---|
{per_stage}

{lineage_sections(manifest)}
{overlap_section(overlap(manifest))}
## MTEB tasks this model was trained on (derived from the corpus)

`model_meta.json` lists them as `training_datasets` (mteb's zero-shot filter reads it): tasks a source declares
(`declared`) and tasks whose evaluation texts the corpus still holds (`in_corpus`: flagged, not dropped).

| MTEB task | why | records |
|---|---|---|
{tasks}
{f"{chr(10)}## Evaluation during training{chr(10)}{chr(10)}| task | type | metric | score |{chr(10)}|---|---|---|---|{chr(10)}{scores}{chr(10)}" if scores else ""}"""
