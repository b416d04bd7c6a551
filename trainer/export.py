"""Save a trained model so that `sentence_transformers.SentenceTransformer(path)` loads it as it is:
same backbone (decoders keep `is_causal: false` in their config), same pooling, L2 normalisation, and the
training instructions as named query prompts.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

    from datakit.manifest_schema import Manifest
    from trainer.card import RunFacts

    from trainer.model import EmbeddingModel
    from trainer.config import TrainConfig

_POOLING = {"mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken", "cls": "pooling_mode_cls_token"}


def prompts_from_tables(tables: dict[str, "pa.Table"], template: str) -> dict[str, str]:
    """{dataset: prompt} for every dataset of every kind with an instruction (its most common one), plus
    `query`: the most common instruction of the retrieval datasets (from the tables a run already has open)."""
    prompts: dict[str, str] = {}
    retrieval: Counter = Counter()
    for kind, table in tables.items():
        pairs = Counter(zip(table.column("dataset").to_pylist(), table.column("instruction").to_pylist()))
        for (ds, ins), _ in pairs.most_common():
            if ins and ds not in prompts:  # most common first: the first one seen is the dataset's
                prompts[ds] = template.format(instruction=ins)
            if ins and kind == "retrieval":
                retrieval[ins] += pairs[(ds, ins)]
    if retrieval:
        prompts["query"] = template.format(instruction=retrieval.most_common(1)[0][0])
    return prompts


def export(model: "EmbeddingModel", folder: str | Path, cfg: "TrainConfig", prompts: dict[str, str],
           manifest: "Manifest | None" = None, facts: "RunFacts | None" = None) -> Path:
    """Save `model` as a SentenceTransformer folder with `prompts` (`prompts_from_tables`) as its named prompts;
    with the corpus's `manifest`, also its model card, model_meta.json and training_datasets.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    if hasattr(backbone, "merge_and_unload"):  # LoRA: save plain weights
        backbone = backbone.merge_and_unload()
    backbone.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    dim = backbone.config.hidden_size
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": cfg.data.doc_max_length, "do_lower_case": False}, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": dim, "include_prompt": True,
               **{flag: False for flag in ("pooling_mode_cls_token", "pooling_mode_mean_tokens",
                                          "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                                          "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")}}
    pooling[_POOLING[model.cfg.pooling]] = True
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        # the template its instructions were trained in: `trainer eval` applies task instructions in it
        **({"query_template": cfg.data.query_template} if prompts else {}),
    }, indent=2, ensure_ascii=False))
    if manifest is not None:
        from trainer.card import RunFacts, write_cards

        n_parameters = sum(p.numel() for p in backbone.parameters())
        write_cards(folder, cfg, manifest, facts or RunFacts(), n_parameters, dim, prompts,
                    name=f"local/{folder.resolve().parent.name}__{folder.name}", revision=weights_revision(folder))
    return folder


def weights_revision(folder: Path) -> str:
    """A short content hash of the exported weights and configs (the cards written after it are not part of it)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json") and f.name not in ("model_meta.json",
                                                                                             "training_datasets.json"):
            h.update(f.relative_to(folder).as_posix().encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()[:12]
