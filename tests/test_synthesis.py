"""LLM synthesis steps against the real embedded model (SmolLM2-135M-Instruct, behind litellm), the HTTP path
against a real OpenAI-compatible server (conftest `llm_server`), resume after SIGKILL, and the quality filters.

Only the bad-output test uses a scripted transport (conftest's `FakeTransport`): a real model cannot be
made to answer with an empty string or a refusal on demand."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from datakit.engines.embed import Embedder
from datakit.llm import quality
from datakit.llm.cache import LLMCache
from datakit.llm.client import Budget, LLMClient
from datakit.llm.prompts import PromptError, load_prompt
from datakit.recipe import RecipeError, load_recipe
from datakit.records import LINEAGE, validate
from datakit.manifest import read_manifest, read_shards
from datakit.sources import Sandbox
from datakit.steps import StepContext, make_step, step_config

from tests.conftest import FakeTransport, build_yaml, run as cli, write

QA = [
    ("How do I reset my password?", "Open Settings, choose Security and press Reset password; a link arrives by e-mail."),
    ("Why is the sky blue?", "Air molecules scatter short blue wavelengths of sunlight more than red ones."),
    ("How long should I boil an egg for a soft yolk?", "Six minutes in boiling water gives a set white and a runny yolk."),
    ("What causes ocean tides?", "The Moon's gravity pulls on the oceans, raising bulges that the Earth rotates through."),
    ("Why do onions make you cry?", "Cutting an onion releases a sulphur gas that irritates the eyes and makes them water."),
    ("What is compound interest?", "Interest earned on both the original sum and the interest already added to it."),
    ("How do vaccines work?", "A vaccine shows the immune system a harmless piece of a germ so it learns to fight it."),
    ("Why do leaves change colour in autumn?", "Trees stop making green chlorophyll, revealing yellow and orange pigments."),
]
TEXTS = [("My card was swallowed by the cash machine", "card_swallowed"),
         ("How long does a bank transfer take to arrive?", "transfer_timing"),
         ("I lost my card on the train yesterday", "lost_card"),
         ("What exchange rate do you use for euros?", "exchange_rate")]
KNOWN_REASONS = {"empty", "too_short", "too_long", "length_ratio", "refusal", "boilerplate", "wrong_script",
                 "near_copy", "drifted", "too_similar", "answered", "unanswered", "off_topic", "same_topic",
                 "query_equals_passage", "false_negative", "duplicate", "invalid_json", "off_schema", "failed",
                 "budget", "judge_says_answers", "judge_invalid_json", "judge_off_schema", "judge_failed"}


def _data(tmp_path: Path, n_qa: int = len(QA)) -> None:
    write(tmp_path / "qa.jsonl", "\n".join(json.dumps({"q": q, "a": a}) for q, a in QA[:n_qa]) + "\n")
    write(tmp_path / "texts.jsonl", "\n".join(json.dumps({"text": t, "label": lab}) for t, lab in TEXTS) + "\n")


SOURCES = """
name: synth
sources:
  - name: qa
    path: qa.jsonl
    adapter: qa
    columns: {query: q, positive: a}
    instruction: "Given a question, retrieve the answer"
  - name: texts
    path: texts.jsonl
    adapter: classification
"""


def _entry_accounts(entry: dict, attempts: int) -> None:
    """Every attempted generation is either kept or dropped with a known reason."""
    assert entry["kept"] + sum(entry["dropped"].values()) == attempts, entry
    assert set(entry["dropped"]) <= KNOWN_REASONS, entry["dropped"]


def test_generators_end_to_end_with_the_embedded_model(tmp_path):
    _data(tmp_path)
    recipe = SOURCES + """
steps:
  - type: paraphrase
    fields: [query, text]
    max_tokens: 48
  - type: augment
    max_records: 4
    max_tokens: 160
  - type: mine_negatives
    skip: 0
    depth: 8
    negatives: 3
    llm_share: 0.34
  - type: llm_negatives
    fraction: 1.0
    fill_to: 3
    max_tokens: 96
"""
    res = build_yaml(tmp_path, recipe)
    m = res.manifest
    syn = m["synthesis"]
    assert set(syn) == {"paraphrase", "augment", "llm_negatives"}
    for name, entry in syn.items():
        assert entry["model"] == "embedded/smollm2" and entry["calls"] > 0 and entry["failed"] == 0, name
        assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] > 0 and entry["cost_usd"] == 0.0
    _entry_accounts(syn["paraphrase"], len(QA) + len(TEXTS))
    _entry_accounts(syn["augment"], 4)
    assert syn["paraphrase"]["kept"] > 0  # SmolLM2 keeps most of these (deterministic: seeded per prompt)

    retrieval = read_shards(res.out_dir, "retrieval")
    classification = read_shards(res.out_dir, "classification")
    for kind, table in (("retrieval", retrieval), ("classification", classification)):
        good, rejected = validate(kind, table)
        assert len(rejected.indices) == 0 and good.num_rows == table.num_rows
    rows = retrieval.to_pylist() + classification.to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    by_id = {r["id"]: r for r in rows}

    # paraphrases: new records pointing at their parent, inside the similarity band, not copies
    paras = [r for r in rows if ":para." in r["id"]]
    assert len(paras) == syn["paraphrase"]["kept"]
    enc = Embedder()
    for r in paras:
        parent = by_id[r["lineage"]["parent_id"]]
        field = "query" if "query" in r else "text"
        src, new = parent[field], r[field]
        assert new != src and quality.copy_ratio(new, src) < 0.9
        [event] = [e for e in r["lineage"]["events"] if e["step"] == "paraphrase"]
        assert event["prompt_id"] == "paraphrase@1" and event["model"] == "embedded/smollm2"
        v = enc.encode([src, new])
        assert 0.7 <= float(v[0] @ v[1]) < 0.995
        if field == "query":
            assert r["positive"] == parent["positive"]
        else:
            assert r["label"] == parent["label"]

    augs = [r for r in rows if ":aug." in r["id"]]
    assert len(augs) == syn["augment"]["kept"]
    for r in augs:
        assert r["dataset"] == "qa"
        assert [e["prompt_id"] for e in r["lineage"]["events"] if e["step"] == "augment"] == ["augment@1"]

    # negatives: mined first (leaving ~1 slot in 3 to the LLM), then the LLM fills; origins add up
    llm_negs = sum(o.count("llm") for o in retrieval.column("negative_origins").to_pylist())
    assert llm_negs == syn["llm_negatives"]["kept"]
    assert m["negatives"]["qa"]["llm"] == llm_negs
    attempts = syn["llm_negatives"]["kept"] + sum(syn["llm_negatives"]["dropped"].values())
    assert attempts >= len(QA) * 0.34 * 3 * 0.5  # the mining step really left room
    for r in retrieval.to_pylist():
        for neg, origin in zip(r["negatives"], r["negative_origins"]):
            if origin == "llm":
                v = enc.encode([r["query"], r["positive"], neg])
                assert 0.3 <= float(v[0] @ v[2]) < 0.95 * float(v[0] @ v[1])  # on topic, not an answer
                assert any(e["step"] == "llm_negatives" for e in r["lineage"]["events"])

    # a rebuild sends nothing: every answer comes from the on-disk cache, and the records are the same
    again = build_yaml(tmp_path, recipe, force=True)
    for name, entry in again.manifest["synthesis"].items():
        assert entry["calls"] == 0 and entry["cache_hits"] == syn[name]["calls"], name
    same = read_shards(again.out_dir, "retrieval").sort_by("id")
    assert same.column("id").to_pylist() == retrieval.sort_by("id").column("id").to_pylist()
    assert same.column("negatives").to_pylist() == retrieval.sort_by("id").column("negatives").to_pylist()


def test_a_recipe_api_base_gets_no_credentials_unless_the_user_allows_it(llm_server, tmp_path, monkeypatch):
    """A shared recipe names a server: the user's OPENAI_API_KEY does not go there (the real server, which needs
    that key, answers 401 to the placeholder the client sends instead); the error says how to allow it. Allowed,
    the same build runs; its answers are cached under that endpoint only."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-secret")
    monkeypatch.delenv("DATAKIT_ALLOW_API_BASE", raising=False)
    _data(tmp_path, n_qa=2)
    body = SOURCES + f"steps: [{{type: paraphrase, max_tokens: 24}}]\nllm: {{model: openai/smollm2, api_base: '{llm_server}', cache: c.sqlite}}\n"
    write(tmp_path / "r.yaml", body)
    env = {"OPENAI_API_KEY": "sk-local-secret"}
    res = cli("datakit", "build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "-q", env=env)
    err = " ".join(res.stderr.split())
    assert res.returncode == 1 and "failed: authentication x1" in err and "--allow-api-base" in err, err
    assert "credentials withheld" in " ".join(res.stdout.split())  # the build printed where requests go
    res = cli("datakit", "build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "-q",
              "--allow-api-base", llm_server, env=env)
    assert res.returncode == 0, res.stderr
    assert "allowed: credentials from the environment" in " ".join(res.stdout.split())
    entry = read_manifest(tmp_path / "out")["synthesis"]["paraphrase"]
    assert entry["endpoint"].startswith("http://127.0.0.1:") and entry["credentials"] == "environment"


def test_http_path_through_litellm_openai_provider(llm_server, tmp_path, monkeypatch):
    """litellm's `openai/` provider against a real OpenAI-compatible server (conftest `llm_server`); the key comes
    from the env, sent because the user allowed that address."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-secret")
    monkeypatch.setenv("DATAKIT_ALLOW_API_BASE", llm_server)
    _data(tmp_path, n_qa=4)
    recipe = SOURCES + f"""
steps:
  - type: paraphrase
    max_tokens: 48
  - type: llm_negatives
    fraction: 1.0
    max_tokens: 96
    structured: false
    max_failed: 1.0          # unconstrained, SmolLM2 often writes no JSON; this test is about the HTTP path
llm:
  model: openai/smollm2
  api_base: {llm_server}
  cache: cache/answers.sqlite
"""
    res = build_yaml(tmp_path, recipe)
    syn = res.manifest["synthesis"]
    assert syn["paraphrase"]["calls"] == 4 and syn["paraphrase"]["completion_tokens"] > 0
    _entry_accounts(syn["paraphrase"], 4)
    neg = syn["llm_negatives"]
    assert neg["records_selected"] == 4 + syn["paraphrase"]["kept"]  # paraphrased records get negatives too
    assert neg["calls"] >= neg["records_selected"]  # + stricter retries for answers that are not JSON
    _entry_accounts(neg, neg["records_selected"])
    assert "sk-local-secret" not in (res.out_dir / "manifest.json").read_text()
    assert b"sk-local-secret" not in (tmp_path / "cache" / "answers.sqlite").read_bytes()


def test_api_keys_in_a_recipe_are_refused(tmp_path):
    path = write(tmp_path / "r.yaml", SOURCES + """
steps:
  - type: paraphrase
    params: {api_key: sk-123}
""")
    with pytest.raises(RecipeError, match=r"steps\[0\].params.*API keys come from the environment"):
        load_recipe(path)


def test_budget_stops_requests_and_the_build_finishes(tmp_path):
    """A price per token makes the local model cost money: the budget stops it after the first answer."""
    _data(tmp_path, n_qa=4)
    res = build_yaml(tmp_path, SOURCES + """
steps:
  - type: paraphrase
    max_tokens: 32
  - type: augment
    max_tokens: 32
llm:
  concurrency: 1                         # with more, requests already in flight may overshoot the cap
  max_budget_usd: 1.0
  price_per_million: [1000000, 1000000]  # $1 per token
  cache: answers.sqlite
""")
    m = res.manifest
    assert m["llm_budget"]["reached"] and m["llm_budget"]["spent_usd"] >= 1.0
    syn = m["synthesis"]
    assert syn["paraphrase"]["calls"] == 1 and syn["paraphrase"]["dropped"]["budget"] == 3
    assert syn["augment"]["calls"] == 0 and syn["augment"]["dropped"]["budget"] == 4  # one budget for the run
    assert m["llm_budget"]["requests_not_sent"] == 7
    assert m["counts"]["retrieval"]["qa"] >= 4  # the source records are all there


RESUME = SOURCES + """
steps:
  - type: paraphrase
    fields: [query, text]
    samples: 2
    temperature: 0.9
    max_tokens: 40
    concurrency: 4
llm:
  cache: answers.sqlite
"""


def test_resume_after_sigkill_sends_no_prompt_twice(tmp_path):
    _data(tmp_path)
    recipe = write(tmp_path / "recipe.yaml", RESUME)
    out, db = tmp_path / "out", tmp_path / "answers.sqlite"
    cmd = [sys.executable, "-m", "datakit.cli", "build", str(recipe), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    answered = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            with sqlite3.connect(db) as con:
                try:
                    answered = con.execute("SELECT count(*) FROM answers").fetchone()[0]
                except sqlite3.OperationalError:
                    answered = 0
            if answered >= 6:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    done_before = LLMCache(db).keys()
    assert len(done_before) >= 6

    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    sent = LLMCache(db).sent_counts()
    # nothing that had returned before the kill was sent again; an in-flight request at most twice
    assert all(sent[k] == 1 for k in done_before)
    assert max(sent.values()) <= 2
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["synthesis"]["paraphrase"]
    attempts = (len(QA) + len(TEXTS)) * 2  # samples: 2
    _entry_accounts(entry, attempts)
    assert entry["cache_hits"] >= len(done_before) and entry["calls"] + entry["cache_hits"] >= attempts

    # every record is there once, and exactly as an uninterrupted build (all from the cache now) makes them
    ids = read_shards(out, "retrieval").column("id").to_pylist() + read_shards(out, "classification").column("id").to_pylist()
    assert len(ids) == len(set(ids))
    clean_out = tmp_path / "clean"
    res = subprocess.run(cmd[:-3] + ["--out", str(clean_out), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    again = json.loads((clean_out / "manifest.json").read_text())["synthesis"]["paraphrase"]
    assert again["calls"] == 0
    for kind in ("retrieval", "classification"):
        a, b = read_shards(out, kind).sort_by("id"), read_shards(clean_out, kind).sort_by("id")
        assert a.drop_columns(["lineage"]).equals(b.drop_columns(["lineage"]))


def test_truncated_json_from_the_real_model_is_dropped_as_invalid(tmp_path):
    """max_tokens too small for the JSON answer: the real model's output is cut off, the stricter retry is
    cut off too, and the generation is dropped with reason invalid_json."""
    _data(tmp_path, n_qa=3)
    res = build_yaml(tmp_path, SOURCES + """
steps:
  - type: augment
    max_tokens: 6
    max_failed: 1.0                      # accept them: the test is about the reason
llm:
  cache: answers.sqlite
""")
    entry = res.manifest["synthesis"]["augment"]
    assert entry["dropped"] == {"invalid_json": 3} and entry["kept"] == 0
    assert entry["calls"] == 6  # each prompt once, then once more with the stricter instruction
    assert entry["failures"] == {"bad_output": 3} and entry["requests"] == 3


def test_a_step_past_its_failure_budget_fails_the_build_with_the_reason(tmp_path):
    """The same truncated answers without `max_failed: 1.0`: 3 of 3 requests gave no usable output, more than the
    default 10%: the build fails naming the class, the model and the counts, and nothing is published."""
    _data(tmp_path, n_qa=3)
    write(tmp_path / "r.yaml", SOURCES + "steps: [{type: augment, max_tokens: 6}]\nllm: {cache: answers.sqlite}\n")
    res = cli("datakit", "build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "-q")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    err = " ".join(res.stderr.split())
    assert "augment: 3 of 3 requests to embedded/smollm2 failed: bad_output x3" in err and "max_failed 10%" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("llm, kind", [
    ("{model: embedded/no-such-model.gguf}", "not_found"),
    ("{model: hosted_vllm/some-model, api_base: 'http://127.0.0.1:{port}/v1', max_retries: 0}", "connection"),
])
def test_a_wrong_model_or_server_fails_before_anything_is_read(tmp_path, llm, kind):
    """Real faults, no mock: a model file that does not exist, a port where nothing listens. The preflight request
    fails in seconds with the class and the model string (and the server, without credentials)."""
    from tests.conftest import free_port

    _data(tmp_path, n_qa=2)
    body = SOURCES + f"steps: [{{type: paraphrase}}]\nllm: {llm.replace('{port}', str(free_port()))}\n"
    write(tmp_path / "r.yaml", body)
    t0 = time.time()
    res = cli("datakit", "build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "-q")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    err = " ".join(res.stderr.split())
    assert "paraphrase: the first request to" in err and f"failed: {kind} x1" in err, err
    assert time.time() - t0 < 60  # not minutes of retries (generous: the CLI's own start-up is most of it)
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "manifest.json").exists()


def test_llm_judge_for_negatives(tmp_path):
    """With the bands opened wide, every parsed negative goes to the LLM judge (the same embedded model)."""
    _data(tmp_path, n_qa=4)
    res = build_yaml(tmp_path, SOURCES + """
steps:
  - type: llm_negatives
    fraction: 1.0
    max_tokens: 96
    min_query_similarity: -1.0
    perc: 100.0
    judge: true
""")
    e = res.manifest["synthesis"]["llm_negatives"]
    judged = e["kept"] + e["dropped"].get("judge_says_answers", 0)
    # one judge request per negative that passed the filters (answers may come from the session's cache)
    assert judged > 0 and e["calls"] + e["cache_hits"] >= 4 + judged
    _entry_accounts(e, 4)
    llm_negs = sum(o.count("llm") for o in read_shards(res.out_dir, "retrieval").column("negative_origins").to_pylist())
    assert llm_negs == e["kept"]


def test_bad_outputs_are_filtered_with_reasons(tmp_path):
    ctx = StepContext(sandbox=Sandbox.of(tmp_path), out_dir=tmp_path, work_dir=tmp_path / "w", artifacts_dir=tmp_path / "a",
                      budget=Budget())
    step = make_step(step_config({"type": "llm_negatives", "fraction": 1.0, "per_record": 1}), ctx)
    answers = ['{"passage": ""}',  # empty
               '{"passage": "I\'m sorry, but I cannot help with that request about eggs."}',  # refusal
               "no JSON at all", "still no JSON",  # invalid JSON, then the stricter retry fails too
               '{"text": "wrong field"}', '{"text": "wrong again"}',  # off schema twice
               '{"passage": "Eggs from free-range hens often have darker yolks than eggs from caged hens."}']
    step._client = LLMClient("openai/x", LLMCache(tmp_path / "c.db"), transport=FakeTransport(answers),
                             concurrency=1)
    queries = ["q1 eggs", "q2 eggs", "q3 eggs", "q4 eggs", "How long should I boil an egg for a soft yolk?"]
    table = pa.table({
        "id": [f"t:{i}" for i in range(5)], "dataset": ["t"] * 5, "instruction": [""] * 5, "query": queries,
        "positive": ["Six minutes in boiling water gives a set white and a runny yolk."] * 5,
        "negatives": pa.array([[]] * 5, pa.list_(pa.string())), "negative_origins": pa.array([[]] * 5, pa.list_(pa.string())),
        "lineage": pa.array([{"source": "t", "file": "f", "row": i, "parent_id": "", "events": []} for i in range(5)],
                            LINEAGE),
    })
    [(kind, out)] = list(step.run(iter([("retrieval", table)])))
    assert step.out["empty"] == 1 and step.out["refusal"] == 1
    assert step.out["invalid_json"] == 1 and step.out["off_schema"] == 1
    assert step.out["kept"] + step.out["false_negative"] + step.out["off_topic"] == 1
    assert out.num_rows == 5


def test_embedded_model_samples_differ_and_repeat(tmp_path):
    """The k-th sample of a prompt is its own draw (a seed per cache key), and the same on every run."""
    msgs = [{"role": "user", "content": "Paraphrase: how do bees make honey"}]
    answers = []
    for run in range(2):
        client = LLMClient("embedded/smollm2", LLMCache(tmp_path / f"c{run}.db"), temperature=0.9, max_tokens=16)
        answers.append([a.text for a in client.complete_many([{"messages": msgs, "sample": k} for k in range(3)])])
        assert client.stats.calls == 3
    assert len(set(answers[0])) > 1 and answers[0] == answers[1]


# ------------------------------------------------------------------ prompts and quality checks
def test_packaged_prompts_load_render_and_version():
    p = load_prompt("llm_negative")
    assert p.ref == "llm_negative@1" and p.fields == {"query", "positive"}
    msgs = p.render({"query": "Q?", "positive": "P."})
    assert msgs[-1]["content"].endswith("Question: Q?\nAnswer passage: P.")
    assert p.schema().model_validate({"passage": "x"}).passage == "x"
    assert load_prompt("paraphrase").schema() is None
    assert load_prompt("paraphrase.v1").cache_version.startswith("paraphrase@1:")
    with pytest.raises(PromptError, match="unknown prompt 'nope'; packaged: augment"):
        load_prompt("nope")


def test_custom_prompt_file_changes_the_cache_version(tmp_path):
    base = load_prompt("paraphrase")
    text = base.path.read_text().replace("Paraphrase:", "Rewrite:")
    custom = load_prompt(str(write(tmp_path / "mine.yaml", text)))
    assert custom.ref == base.ref and custom.cache_version != base.cache_version
    with pytest.raises(PromptError, match="not a prompt file"):
        load_prompt(str(write(tmp_path / "bad.yaml", "id: x\n")))


def test_quality_checks():
    cfg = quality.QualityConfig()
    assert quality.check("", "src", cfg) == "empty"
    assert quality.check("short", "src", cfg) == "too_short"
    assert quality.check("x" * 3000, "src", cfg) == "too_long"
    assert quality.check("I'm sorry, I can't help with that.", "How do I bake bread?", cfg) == "refusal"
    assert quality.check("As an AI language model I think bread is great", "How do I bake bread?", cfg) == "refusal"
    assert quality.check("Sure! What is the best way to bake bread?", "How do I bake bread?", cfg) == "boilerplate"
    assert quality.check("Here is the rewritten query: bread", "How do I bake bread?", cfg) == "boilerplate"
    assert quality.check("如何在家里烤面包？", "How do I bake bread at home?", cfg) == "wrong_script"
    assert quality.check("How do I bake bread?!", "how do i bake bread", cfg, copy_of=["how do i bake bread"]) == "near_copy"
    assert quality.check("What is the way to make a loaf at home?", "How do I bake bread?", cfg,
                         copy_of=["How do I bake bread?"]) == ""
    assert quality.check("今天天气很好，我们去公园吧", "今天天气不错", cfg) == ""
    assert quality.main_script("こんにちは、東京") == "Japanese" and quality.main_script("Привет") == "Cyrillic"
    assert quality.clean('  "What makes dogs bark?"  ') == "What makes dogs bark?"
    assert quality.clean('"a" and "b"') == '"a" and "b"'
    ratio = quality.QualityConfig(max_char_ratio=2.0)
    assert quality.check("A much, much longer text than its tiny source", "Tiny", ratio) == "length_ratio"


def test_similarity_helper_is_cosine(tmp_path):
    ctx = StepContext(sandbox=Sandbox.of(tmp_path), out_dir=tmp_path, work_dir=tmp_path, artifacts_dir=tmp_path)
    step = make_step(step_config({"type": "paraphrase"}), ctx)
    sims = step.similarity(["a cat sat on the mat", "stock markets fell"], ["a cat sat on the mat", "kittens"])
    assert abs(sims[0] - 1.0) < 1e-5 and sims[1] < 0.5 and isinstance(sims, np.ndarray)
