"""Padding-free steps: the same loss as the padded path, with far less padding."""
import itertools

import numpy as np
import pytest
import torch

from trainer.data import Batch, DataConfig
from trainer.model import EmbeddingModel, ModelConfig
from trainer.packing import encode_texts, plan_chunks
from trainer.config import TrainConfig
from trainer.step_loss import batch_loss, grad_cache_step

WORDS = ("the bank raised its rates again after the meeting of the board in march while markets "
         "fell sharply on the news that inflation kept rising 银行 利率 上调").split()


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(2, 60)))) for _ in range(n)]


def test_plan_chunks_is_optimal_and_covers_every_text():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(1, 100, int(rng.integers(1, 8)))
        chunks = plan_chunks(lengths, overhead=10)
        assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))
        cost = sum(len(c) * lengths[c].max() + 10 for c in chunks)
        ordered = np.sort(lengths)[::-1]  # brute force over every cut of the sorted order
        best = min(sum((j - i) * ordered[i] + 10 for i, j in zip((0, *cuts), (*cuts, len(ordered))))
                   for r in range(len(ordered)) for cuts in itertools.combinations(range(1, len(ordered)), r))
        assert cost == best


def test_padding_free_keeps_little_padding_on_varied_lengths():
    model = EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu")
    texts = _texts(160, 1)
    padded = encode_texts(model.tokenizer, texts, 128, torch.device("cpu"), False, 16)
    free = encode_texts(model.tokenizer, texts, 128, torch.device("cpu"), True, 16)
    assert padded.real == free.real
    assert 1 - padded.real / padded.positions > 0.3 and 1 - free.real / free.positions <= 0.10


@pytest.mark.parametrize("side", ["right", "left"])
def test_split_to_more_chunks_keeps_every_embedding(side):
    """What processes with fewer chunks do to match the others' forward calls: split chunks by rows, each cut to
    its own longest text; the embeddings, their order and the real tokens stay the same."""
    model = EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu").eval()
    model.tokenizer.padding_side = side  # BERT needs right padding to be exact; left checks the cut columns
    texts = _texts(24, 3)
    enc = encode_texts(model.tokenizer, texts, 64, torch.device("cpu"), True, 128)
    with torch.no_grad():
        before = enc.restore(torch.cat([model(**c) for c in enc.chunks]))
        n, positions = len(enc.chunks), enc.positions
        enc.split_to(n + 5)
        after = enc.restore(torch.cat([model(**c) for c in enc.chunks]))
    assert len(enc.chunks) == n + 5 and enc.positions <= positions
    assert enc.positions == sum(c["input_ids"].numel() for c in enc.chunks)
    edge = -1 if side == "right" else 0  # the outermost column holds some text: no column of padding only
    assert all(int(c["attention_mask"][:, edge].max()) == 1 for c in enc.chunks)
    if side == "right":
        assert torch.allclose(before, after, atol=1e-5)
    with pytest.raises(ValueError, match="cannot make"):
        enc.split_to(len(texts) + 1)


def _cfg(model_cfg, grad_cache=0):
    return TrainConfig(model=model_cfg, data=DataConfig(shards="unused", query_max_length=64, doc_max_length=64),
                       output_dir="unused", tau=0.05, grad_cache_chunk=grad_cache)


def _step(model, mc, batch, grad_cache):
    """(loss, a non-zero parameter gradient, real tokens, positions) of one step, plain or through GradCache."""
    model.zero_grad()
    if grad_cache:
        loss, real, positions = grad_cache_step(model, batch, _cfg(mc, grad_cache), lambda l: l.backward())
    else:
        loss, real, positions = batch_loss(model, batch, _cfg(mc))
        loss.backward()
    grad = next(p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0).grad.clone()
    return float(loss.detach()), grad, real, positions


@pytest.mark.parametrize("name,cases", [
    ("embedded-minilm", [("mean", "right"), ("cls", "right")]),  # (BERT: absolute positions, right padding only)
    ("embedded-smollm2", [("mean", "right"), ("last", "left")]),
])
def test_padding_free_loss_equals_padded_loss(name, cases, monkeypatch):
    """fp32 on the CPU, dropout off: the same batch gives the same loss (relative difference <= 1e-4) and
    the same gradient, plainly and through GradCache, for an encoder and a bidirectional decoder, every
    pooling, left and right padding. (A small per-call cost, so these short batches split into chunks.)"""
    import trainer.step_loss

    monkeypatch.setattr(trainer.step_loss, "default_overhead", lambda device: 0.5)
    mc = ModelConfig(name_or_path=name)
    model = EmbeddingModel(mc, device="cpu", training=True).eval()
    texts = [t[:60] for t in _texts(24, 2)]
    retrieval = Batch("retrieval", "d", texts[:4], texts[4:8], [texts[8 + 2 * i: 10 + 2 * i] for i in range(4)])
    pair = Batch("pair", "d", texts[16:20], texts[20:24], scores=[0.0, 1.0, 3.0, 5.0])
    for (pooling, side), batch in itertools.product(cases, (retrieval, pair)):
        mc.pooling, model.tokenizer.padding_side = pooling, side
        results = {}
        for free, gc in ((False, 0), (True, 0), (True, 3)):
            mc.padding_free = free
            results[(free, gc)] = _step(model, mc, batch, gc)
        base = results[(False, 0)]
        for key, (loss, grad, real, positions) in results.items():
            assert abs(loss - base[0]) <= 1e-4 * abs(base[0]), (pooling, side, batch.kind, key, loss, base[0])
            assert float((grad - base[1]).norm() / base[1].norm()) <= 1e-3, (pooling, side, batch.kind, key)
            assert real == base[2]
        assert results[(True, 0)][3] < base[3]  # fewer positions computed


def test_pack_restarts_positions_and_pools_per_text():
    from trainer.varlen import pack, pool_packed

    packed = pack([[5, 6, 7], [8], [9, 10]])
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]] and packed["cu_seqlens"].tolist() == [0, 3, 4, 6]
    hidden = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)
    assert pool_packed(hidden, packed["cu_seqlens"], "mean").tolist() == [[2, 3], [6, 7], [9, 10]]
    assert pool_packed(hidden, packed["cu_seqlens"], "last").tolist() == [[4, 5], [6, 7], [10, 11]]
    assert pool_packed(hidden, packed["cu_seqlens"], "cls").tolist() == [[0, 1], [6, 7], [8, 9]]


def test_packed_varlen_loss_equals_padded_loss():
    """Packed texts (one row, positions restarting per text, attention within each text: on the CPU computed
    text by text, on CUDA by the varlen kernel) give the padded path's loss and gradient, plainly and through
    GradCache, for SmolLM2 (a decoder with grouped-query attention), with no padding at all."""
    mc = ModelConfig(name_or_path="embedded-smollm2", varlen=True)
    model = EmbeddingModel(mc, device="cpu", training=True).eval()
    assert model.varlen and model.backbone.config._attn_implementation == "embedkit_varlen"
    from trainer.model import packed_matches_padded

    assert packed_matches_padded(model)
    texts = [t[:60] for t in _texts(24, 2)]
    retrieval = Batch("retrieval", "d", texts[:4], texts[4:8], [texts[8 + 2 * i: 10 + 2 * i] for i in range(4)])
    for pooling in ("mean", "last"):
        mc.pooling = pooling
        results = {}
        for varlen, gc in ((False, 0), (True, 0), (True, 3)):
            mc.padding_free = varlen  # the base: the padded path
            results[(varlen, gc)] = _step(model, mc, retrieval, gc)
        base = results[(False, 0)]
        for key, (loss, grad, real, positions) in results.items():
            assert abs(loss - base[0]) <= 1e-4 * abs(base[0]), (pooling, key, loss, base[0])
            assert float((grad - base[1]).norm() / base[1].norm()) <= 1e-3, (pooling, key)
            assert real == base[2] and (positions == real if key[0] else positions > real)


def test_varlen_is_refused_where_it_cannot_apply_and_off_by_default_on_the_cpu():
    with pytest.raises(ValueError, match="not a bidirectional decoder"):
        EmbeddingModel(ModelConfig(name_or_path="embedded-minilm", varlen=True), device="cpu")
    assert not EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu").varlen  # micro-batches here
