"""The LLM client: faults through a fake transport (named so: a real server cannot be made to send 429s or
time out on demand), everything else against a real local model behind litellm (conftest `llm_server`)."""
import time

from pydantic import BaseModel

from datakit.llm.cache import LLMCache, cache_key
from datakit.llm.client import LLMClient, parse_json

from tests.conftest import LLM_SERVER_KEY, FakeTransport


def _rate_limited(retry_after="0.05"):
    import httpx
    import litellm

    resp = httpx.Response(429, headers={"retry-after": retry_after}, request=httpx.Request("POST", "http://x"))
    return litellm.RateLimitError("slow down", llm_provider="openai", model="m", response=resp)


def test_cache_key_ignores_credentials_and_counts_samples():
    msgs = [{"role": "user", "content": "hi"}]
    a = cache_key("m", msgs, {"temperature": 0.7, "api_key": "sk-secret", "api_base": "http://a"}, "p@1", 0)
    b = cache_key("m", msgs, {"temperature": 0.7, "api_key": "other", "api_base": "http://b"}, "p@1", 0)
    assert a == b
    assert cache_key("m", msgs, {"temperature": 0.7}, "p@1", 1) != a
    # the endpoint is part of the key: one server's answers are never served as another's (cache poisoning)
    at_a = cache_key("m", msgs, {"temperature": 0.7}, "p@1", 0, "http://a/v1")
    assert at_a not in (a, cache_key("m", msgs, {"temperature": 0.7}, "p@1", 0, "http://b/v1"))
    assert at_a == cache_key("m", msgs, {"temperature": 0.7, "api_base": "http://b"}, "p@1", 0, "http://a/v1")
    assert cache_key("m", msgs, {"temperature": 0.7}, "p@2", 0) != a


def test_rate_limit_with_retry_after_then_success(tmp_path):
    transport = FakeTransport([_rate_limited(), _rate_limited(), "done"])
    client = LLMClient("openai/m", LLMCache(tmp_path / "c.db"), transport=transport, backoff=0.01)
    t = time.time()
    [ans] = client.complete_many([{"messages": [{"role": "user", "content": "x"}]}])
    assert ans.text == "done" and transport.calls == 3 and client.stats.calls == 3
    assert time.time() - t >= 0.1  # waited as the provider asked
    assert client.stats.prompt_tokens == 10 and client.stats.failed == 0


def test_timeouts_exhaust_retries_and_the_run_goes_on(tmp_path):
    transport = FakeTransport([1.0, 1.0, "never reached", "second prompt ok"])
    client = LLMClient("openai/m", LLMCache(tmp_path / "c.db"), transport=transport, timeout=0.05,
                       max_retries=1, backoff=0.01, concurrency=1)
    answers = client.complete_many([{"messages": [{"role": "user", "content": "a"}]},
                                    {"messages": [{"role": "user", "content": "b"}]}])
    assert answers[0].text is None and answers[0].error == "failed"
    assert client.stats.failed == 1 and client.stats.calls == 3


def test_budget_stops_new_requests(tmp_path):
    client = LLMClient("openai/m", LLMCache(tmp_path / "c.db"), transport=FakeTransport(["a", "b", "c"]),
                       max_budget_usd=0.0001, concurrency=1)
    client._cost = lambda resp: 0.0001  # each answer costs the whole budget
    answers = client.complete_many([{"messages": [{"role": "user", "content": str(i)}]} for i in range(3)])
    assert [a.text for a in answers] == ["a", None, None]
    assert client.stats.budget_skipped == 2 and client.budget_reached


def test_twin_requests_in_flight_are_sent_once(tmp_path):
    """The same prompt twice in one run (a pair in both orders): the second waits for the first's answer."""
    transport = FakeTransport([0.05, "other"])  # the first reply arrives after 50 ms, while its twin waits
    client = LLMClient("openai/m", LLMCache(tmp_path / "c.db"), transport=transport, concurrency=4)
    same = {"messages": [{"role": "user", "content": "same"}]}
    a, b, c = client.complete_many([same, same, {"messages": [{"role": "user", "content": "other"}]}])
    assert transport.calls == 2 and client.stats.calls == 2 and client.stats.cache_hits == 1
    assert a.text == b.text == "late" and c.text == "other"
    assert LLMCache(tmp_path / "c.db").sent_counts() == {k: 1 for k in LLMCache(tmp_path / "c.db").keys()}


class Pair(BaseModel):
    query: str
    passage: str


def test_json_answers_are_validated_with_one_stricter_retry(tmp_path):
    assert parse_json('sure! {"query": "q", "passage": "p"} hope it helps', Pair)[0] == Pair(query="q", passage="p")
    assert parse_json("no json here", Pair) == (None, "invalid_json")
    assert parse_json('{"query": "q"}', Pair) == (None, "off_schema")
    transport = FakeTransport(["not json", '{"query": "q", "passage": "p"}', "still not", "nope"])
    client = LLMClient("openai/m", LLMCache(tmp_path / "c.db"), transport=transport, concurrency=1)
    ok, bad = client.complete_many([{"messages": [{"role": "user", "content": "1"}], "schema": Pair},
                                    {"messages": [{"role": "user", "content": "2"}], "schema": Pair}])
    assert ok.data == Pair(query="q", passage="p")
    assert bad.data is None and bad.error == "invalid_json" and client.stats.dropped == {"invalid_json": 1}


# ------------------------------------------------------------------ a real local model (llm_server: conftest)
def test_real_local_model_over_http_with_cache(llm_server, tmp_path):
    params = {"api_base": llm_server, "api_key": LLM_SERVER_KEY, "temperature": 0.0, "max_tokens": 24}
    prompts = [{"messages": [{"role": "user", "content": f"Name a colour. ({i})"}], "prompt_version": "t@1"}
               for i in range(4)]
    client = LLMClient("openai/smollm2", LLMCache(tmp_path / "c.db"), concurrency=2, **params)
    answers = client.complete_many(prompts)
    assert all(a.text and not a.cached for a in answers)
    assert client.stats.calls == 4 and client.stats.completion_tokens > 0 and client.stats.prompt_tokens > 0
    again = LLMClient("openai/smollm2", LLMCache(tmp_path / "c.db"), concurrency=2, **params)
    repeat = again.complete_many(prompts)
    assert again.stats.calls == 0 and again.stats.cache_hits == 4
    assert [a.text for a in repeat] == [a.text for a in answers]
    assert LLM_SERVER_KEY not in (tmp_path / "c.db").read_bytes().decode("utf-8", "replace")


def test_a_real_server_refusing_the_key_or_the_model_is_counted_not_retried(llm_server, tmp_path):
    """`datakit serve-llm` answers a wrong key with 401 and an unknown model with 404, as hosted providers do:
    the client classifies both, retries neither, and never stores the key."""
    prompt = [{"messages": [{"role": "user", "content": "Name a colour."}]}]
    wrong = LLMClient("openai/smollm2", LLMCache(tmp_path / "c.db"), api_base=llm_server, api_key="sk-wrong-key",
                      max_tokens=8)
    assert [a.text for a in wrong.complete_many(prompt)] == [None]
    assert wrong.stats.failures == {"authentication": 1} and wrong.stats.calls == 1
    assert "sk-wrong-key" not in str(wrong.stats.failure_examples)
    missing = LLMClient("openai/no-such-model", LLMCache(tmp_path / "c.db"), api_base=llm_server,
                        api_key=LLM_SERVER_KEY, max_tokens=8)
    assert [a.text for a in missing.complete_many(prompt)] == [None]
    assert missing.stats.failures == {"not_found": 1} and missing.stats.calls == 1


def test_failures_are_counted_by_class_with_one_redacted_example_each(tmp_path):
    """Faults a real local server cannot be made to give (a rejected key, an unknown model), scripted with the
    named fake transport."""
    import litellm

    auth = litellm.AuthenticationError("Incorrect API key provided: sk-proj-abcdef123456", "openai", "gpt-x")
    missing = litellm.NotFoundError("The model `gpt-x` does not exist", "openai", "gpt-x")
    client = LLMClient("openai/gpt-x", LLMCache(tmp_path / "c.db"), transport=FakeTransport([auth, missing, "fine"]),
                       concurrency=1, max_retries=0)
    answers = client.complete_many([{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)])
    assert [a.text for a in answers] == [None, None, "fine"]
    assert client.stats.failures == {"authentication": 1, "not_found": 1}
    shown = client.stats.failure_examples["authentication"]
    assert "AuthenticationError" in shown and "sk-proj-abcdef123456" not in shown and "[redacted]" in shown
