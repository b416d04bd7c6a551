"""The embedded model's runtimes: SmolLM2-135M-Instruct from its GGUF in transformers (the default: batched,
shared prompt beginning, field-by-field JSON), and llama.cpp behind the same litellm provider."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from datakit.llm.embedded import gguf_path
from datakit.llm.gguf_transformers import TransformersRuntime, shared_prefix
from embedkit.gguf import converted_dir
from datakit.steps.synthesis import concat_batches, gathered, split_like

SCHEMA = {"type": "json_schema", "json_schema": {"name": "Out", "schema": {
    "type": "object", "properties": {"query": {"type": "string"}, "passage": {"type": "string"}}}}}
QUESTIONS = ["Why is the sky blue?", "How do vaccines work?", "What causes ocean tides?",
             "How long should I boil an egg?"]


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You write one search query and one passage that answers it. "
                                          'Reply in JSON: {"query": "...", "passage": "..."}'},
            {"role": "user", "content": f"Topic: {question}"}]


@pytest.fixture(scope="module")
def runtime() -> TransformersRuntime:
    return TransformersRuntime(gguf_path("smollm2"))


def _ask(runtime: TransformersRuntime, requests: list[tuple[list[dict], dict, int]]) -> list[dict]:
    futures = [runtime.submit(m, p, seed) for m, p, seed in requests]  # submitted together: one batch
    return [f.result(timeout=300) for f in futures]


def test_an_answer_does_not_depend_on_the_requests_that_share_its_batch(runtime):
    params = {"temperature": 0.7, "max_tokens": 40}
    alone = _ask(runtime, [([{"role": "user", "content": QUESTIONS[0]}], params, 7)])[0]
    together = _ask(runtime, [([{"role": "user", "content": q}], params, 7 + i) for i, q in enumerate(QUESTIONS)])
    assert together[0]["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
    again = _ask(runtime, [([{"role": "user", "content": QUESTIONS[0]}], params, 8)])[0]
    assert again["choices"][0]["message"]["content"] != alone["choices"][0]["message"]["content"]  # the seed counts
    usage = alone["usage"]
    assert 0 < usage["completion_tokens"] <= 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_request_its_caller_gave_up_on_does_not_stop_the_model(runtime):
    """A client timeout cancels its request's future while the request waits or runs (the build's LLM client
    wraps each call in `asyncio.wait_for`): the worker must go on answering the next requests. Before, the
    cancelled future made the worker thread die on `set_result`, and the build then waited on every later
    request until its retries ran out."""
    import asyncio

    async def give_up() -> None:
        slow = runtime.submit([{"role": "user", "content": QUESTIONS[1]}], {"max_tokens": 40}, 5)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(slow), timeout=0.001)
        assert slow.cancelled() or slow.running() or slow.done()

    for _ in range(3):  # cancelled while queued, and (likely) while generating
        asyncio.run(give_up())
    answer = _ask(runtime, [([{"role": "user", "content": QUESTIONS[2]}], {"max_tokens": 8}, 1)])[0]
    assert answer["choices"][0]["message"]["content"].strip()


def test_structured_answers_always_parse_and_a_cut_one_does_not(runtime):
    answers = _ask(runtime, [(_messages(q), {"response_format": SCHEMA, "max_tokens": 200}, i)
                             for i, q in enumerate(QUESTIONS)])
    for answer in answers:
        data = json.loads(answer["choices"][0]["message"]["content"])
        assert list(data) == ["query", "passage"] and all(isinstance(v, str) for v in data.values())
    cut = _ask(runtime, [(_messages(QUESTIONS[0]), {"response_format": SCHEMA, "max_tokens": 3}, 1)])[0]
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] <= 3
    with pytest.raises(json.JSONDecodeError):  # as a provider's answer cut by max_tokens: not valid JSON
        json.loads(cut["choices"][0]["message"]["content"])


def test_literal_json_values_keep_to_their_type(runtime):
    """A 135M model asked for a boolean writes `1` or `2022` unless its tokens are held to the grammar."""
    schema = {"type": "json_schema", "json_schema": {"name": "Judge", "schema": {"type": "object", "properties": {
        "answers": {"type": "boolean"}, "year": {"type": "integer"}, "score": {"type": "number"}}}}}
    ask = [{"role": "user", "content": f"{q} Reply in JSON with whether you know the answer, the current year and "
                                       "your confidence."} for q in QUESTIONS]
    answers = _ask(runtime, [([m], {"response_format": schema, "max_tokens": 40, "temperature": 1.0}, i)
                             for i, m in enumerate(ask)])
    for answer in answers:
        data = json.loads(answer["choices"][0]["message"]["content"])
        assert isinstance(data["answers"], bool), data
        assert isinstance(data["year"], int) and not isinstance(data["year"], bool), data
        assert isinstance(data["score"], (int, float)), data


def test_stop_strings_and_a_greedy_answer_repeat(runtime):
    params = {"temperature": 0, "max_tokens": 30, "stop": ["."]}
    one, two = _ask(runtime, [([{"role": "user", "content": QUESTIONS[1]}], params, 1),
                              ([{"role": "user", "content": QUESTIONS[1]}], params, 2)])
    text = one["choices"][0]["message"]["content"]
    assert text == two["choices"][0]["message"]["content"]  # temperature 0: the seed does not matter
    assert "." not in text and text


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix([[4], [4, 5]]) == 0


def test_the_converted_model_is_kept_and_gives_the_same_answers(tmp_path):
    """A fresh process converts the GGUF and keeps the copy; the next one loads the copy and answers alike."""
    code = ("import json; from datakit.llm.embedded import gguf_path; "
            "from datakit.llm.gguf_transformers import TransformersRuntime as R; "
            "r = R(gguf_path('smollm2')); "
            "print(json.dumps(r.submit([{'role': 'user', 'content': 'Name a colour.'}], {'max_tokens': 12}, 3)"
            ".result()['choices'][0]['message']['content']))")
    env = {**os.environ, "DATAKIT_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    kept = converted_dir(gguf_path("smollm2")).name
    assert (tmp_path / "models" / kept / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no leftover temporary
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads(second.stdout.strip().splitlines()[-1]) == json.loads(first.stdout.strip().splitlines()[-1])


def test_small_batches_travel_together_and_come_back_apart():
    tables = [("retrieval", pa.table({"id": [f"{d}{i}" for i in range(n)]})) for d, n in
              (("a", 3), ("b", 2), ("c", 300), ("d", 1))] + [("pair", pa.table({"id": ["p0"]}))]
    groups = list(gathered(iter(tables), rows=256))
    assert [(k, [t.num_rows for t in g]) for k, g in groups] == [("retrieval", [3, 2]), ("retrieval", [300]),
                                                                  ("retrieval", [1]), ("pair", [1])]
    first = groups[0][1]
    back = split_like(concat_batches(first), first)
    assert [t.column("id").to_pylist() for t in back] == [t.column("id").to_pylist() for t in first]


def test_llama_cpp_runtime_through_litellm(monkeypatch):
    pytest.importorskip("llama_cpp")
    import litellm

    from datakit.llm import embedded

    monkeypatch.setenv("DATAKIT_EMBEDDED_RUNTIME", "llama.cpp")
    embedded.register()
    response = litellm.completion(model="embedded/smollm2", messages=[{"role": "user", "content": "Say hi."}],
                                  max_tokens=8, seed=1)
    assert response.choices[0].message.content.strip()
    assert 0 < response.usage.completion_tokens <= 8
    assert ("llama.cpp", "smollm2") in embedded._handler._models


def test_an_unknown_runtime_is_named_in_the_error(monkeypatch):
    from datakit.llm.embedded import EmbeddedModelError, runtime_name

    monkeypatch.setenv("DATAKIT_EMBEDDED_RUNTIME", "vllm")
    with pytest.raises(EmbeddedModelError, match="DATAKIT_EMBEDDED_RUNTIME='vllm'"):
        runtime_name()
