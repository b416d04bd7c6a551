"""A GGUF chat model run by transformers (the `gguf` package dequantises it; no compiler, no llama.cpp).

Requests that arrive together are generated as one batch: a worker thread collects them for a few
milliseconds, up to `max_batch`, and decodes them together. The prompts' common beginning (a packaged prompt's
instructions and examples, most of its tokens) is run once and its KV cache shared by every row; a row that
ends leaves the batch. Sampling is done per request by `RowSampler` with
the request's own seeded generator, temperature, top-k/top-p/min-p, penalties, `max_tokens` and `stop`
strings, so a request's answer does not depend on which other requests shared its batch (up to the last bits
of a padded forward pass).

A request with a JSON-schema `response_format` of flat fields (the packaged prompts') is answered field by
field: the keys and quotes are written for the model, which writes only each value, and the answer is
assembled with `json.dumps`, so it always parses; llama.cpp's grammar does the same job in the other runtime.
"""
from __future__ import annotations

import concurrent.futures
import inspect
import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embedkit.gguf import load_converted

#: llama.cpp's chat-completion defaults, so both runtimes sample alike
DEFAULTS = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": 256}
LITERAL_END = (",", "}", "\n")
#: a common prompt beginning shorter than this is not worth a forward pass of its own
MIN_SHARED = 16


def schema_fields(response_format: Any) -> list[tuple[str, str]]:
    """(name, JSON type) of each top-level property of a JSON-schema response format, in order; [] without."""
    if not isinstance(response_format, dict):
        return []
    schema = (response_format.get("json_schema") or {}).get("schema") or response_format.get("schema") or {}
    return [(name, str(spec.get("type", "string"))) for name, spec in (schema.get("properties") or {}).items()]


def closing_quote(text: str) -> int:
    """Index of the first `"` in `text` that no backslash escapes, or -1."""
    i = text.find('"')
    while i >= 0:
        slashes = len(text[:i]) - len(text[:i].rstrip("\\"))
        if slashes % 2 == 0:
            return i
        i = text.find('"', i + 1)
    return -1


def value_end(text: str, kind: str) -> int:
    """Where the value the model is writing ends: at its closing quote (strings) or at `,`, `}` or a newline."""
    if kind == "string":
        return closing_quote(text)
    ends = [text.index(c) for c in LITERAL_END if c in text]
    return min(ends) if ends else -1


@dataclass
class Request:
    """One chat completion: messages, sampling parameters, the fields it still has to write, its future."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]
    seed: int
    fields: list[tuple[str, str]] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    used: int = 0  # tokens generated so far (all fields)
    capped: bool = False
    truncated: str | None = None  # the unfinished JSON of an answer that ran out of tokens mid-value
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def get(self, name: str) -> Any:
        value = self.params.get(name)
        return DEFAULTS[name] if value is None else value

    def stops(self) -> list[str]:
        stop = self.params.get("stop")
        return [stop] if isinstance(stop, str) else list(stop or [])

    @property
    def budget(self) -> int:
        return max(0, int(self.get("max_tokens")) - self.used)

    @property
    def pending(self) -> tuple[str, str] | None:
        """The field the next round writes (None: plain text, every field written, or out of tokens)."""
        done = self.truncated is not None or len(self.values) >= len(self.fields)
        return None if done else self.fields[len(self.values)]

    def answer_prefix(self) -> str:
        """The JSON written so far and the opening of the pending field's value."""
        parts = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in self.values.items()]
        name, kind = self.pending  # type: ignore[misc]
        return "{" + "".join(p + ", " for p in parts) + f"{json.dumps(name)}: " + ('"' if kind == "string" else "")

    def take_value(self, text: str, capped: bool) -> None:
        """Keep the value the model wrote; one cut off by the token budget leaves the answer unfinished (as a
        provider's would be: it does not parse)."""
        name, kind = self.pending  # type: ignore[misc]
        end = value_end(text, kind)
        if end < 0 and capped:
            self.truncated = self.answer_prefix() + text
            return
        raw = text if end < 0 else text[:end]
        try:
            value = json.loads(f'"{raw}"' if kind == "string" else raw.strip())
        except json.JSONDecodeError:
            value = raw if kind == "string" else raw.strip()
        self.values[name] = value

    def cut_at_stop(self, text: str) -> tuple[str, bool]:
        """The answer up to its first stop string, and whether one was found."""
        cuts = [text.index(s) for s in self.stops() if s in text]
        return (text, False) if not cuts else (text[:min(cuts)], True)


class RowSampler:
    """Picks each row's next token with its request's own generator and parameters; ends a row (None) at its
    token budget, at a stop string, or (structured answers) where the value it writes ends."""

    def __init__(self, requests: list[Request], tokenizer: Any, vocabulary: "Vocabulary | None" = None) -> None:
        self.requests, self.tok, self.vocabulary = requests, tokenizer, vocabulary
        self.capped = [False] * len(requests)

    def _ended(self, req: Request, text: str) -> bool:
        pending = req.pending
        if not text or (pending is None and not req.stops()):
            return False
        if pending is not None:
            return value_end(text, pending[1]) >= 0
        return any(s in text for s in req.stops())

    def next(self, row: int, generated: list[int], logits: torch.Tensor) -> int | None:
        """Row `row`'s next token after `generated`, or None where the row ends."""
        req = self.requests[row]
        if len(generated) >= req.budget:
            self.capped[row] = True
            return None
        needs_text = req.pending is not None or req.stops()
        text = self.tok.decode(generated, skip_special_tokens=True) if generated and needs_text else ""
        if self._ended(req, text):
            return None
        if generated:
            logits = _penalise(logits, torch.tensor(generated), req)
        if req.pending is not None and req.pending[1] != "string" and self.vocabulary is not None:
            allowed = self.vocabulary.allowed(req.pending[1], text)
            if allowed is not None:
                logits = logits.masked_fill(~allowed[:logits.numel()], -math.inf)
        temperature = float(req.get("temperature"))
        if temperature <= 0:
            return int(torch.argmax(logits))
        logits = logits / temperature
        k = int(req.get("top_k"))
        values, index = torch.topk(logits, k) if 0 < k < logits.numel() else torch.sort(logits, descending=True)
        probs = torch.softmax(values, dim=-1)
        keep = probs >= float(req.get("min_p")) * probs[0]
        top_p = float(req.get("top_p"))
        if top_p < 1.0:
            keep &= (torch.cumsum(probs, dim=-1) - probs) < top_p
        keep[0] = True
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        return int(index[torch.multinomial(probs / probs.sum(), 1, generator=req.generator)])


class Vocabulary:
    """Each token's text, to keep a literal JSON value (boolean, number, integer) to its grammar, as llama.cpp's
    grammar does: a small model asked for a boolean otherwise writes `1` or `2022`."""

    OPTIONS = {"boolean": ("true", "false"), "null": ("null",)}
    NUMBER = {"number": set("0123456789-+.eE"), "integer": set("0123456789-")}

    def __init__(self, tokenizer: Any, size: int) -> None:
        self.texts = [tokenizer.decode([i]) for i in range(min(len(tokenizer), size))]
        self.size = size
        self._masks: dict[tuple[str, str], torch.Tensor] = {}

    def _mask(self, ok: Any) -> torch.Tensor:
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[[i for i, t in enumerate(self.texts) if t and ok(t)]] = True
        return mask

    def allowed(self, kind: str, written: str) -> torch.Tensor | None:
        """Tokens that may follow `written` in a value of JSON type `kind` (None: any token)."""
        stem = written.lstrip()
        if kind in self.OPTIONS:
            options = self.OPTIONS[kind]
            key = (kind, stem)
            if key not in self._masks:
                if stem in options:  # the literal is whole: only its end may follow
                    self._masks[key] = self._mask(lambda t: t[0] in LITERAL_END)
                else:
                    self._masks[key] = self._mask(
                        lambda t: bool((stem + t).strip()) and (stem + t).lstrip() == (stem + t).strip()
                        and any(o.startswith((stem + t).lstrip()) for o in options))
            return self._masks[key]
        if kind in self.NUMBER:
            chars = self.NUMBER[kind]
            digits = any(c.isdigit() for c in stem)
            key = (kind, "digits" if digits else "")
            if key not in self._masks:
                self._masks[key] = self._mask(lambda t: set(t) <= chars or (digits and t[0] in LITERAL_END))
            return self._masks[key]
        return None


def shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens every row has in common (at most the shortest row less one: every row keeps a
    token of its own to start from)."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for other in rows[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return max(0, n)


def _penalise(logits: torch.Tensor, generated: torch.Tensor, req: Request) -> torch.Tensor:
    """llama.cpp's repeat penalty (divide positive logits, multiply negative ones) and OpenAI's presence and
    frequency penalties, over the tokens generated so far."""
    repeat, presence, frequency = (float(req.get(n)) for n in ("repeat_penalty", "presence_penalty",
                                                               "frequency_penalty"))
    if repeat == 1.0 and presence == 0.0 and frequency == 0.0:
        return logits
    logits = logits.clone()
    tokens, counts = torch.unique(generated, return_counts=True)
    seen = logits[tokens]
    if repeat != 1.0:
        seen = torch.where(seen > 0, seen / repeat, seen * repeat)
    logits[tokens] = seen - presence - frequency * counts.to(seen.dtype)
    return logits


class TransformersRuntime:
    """One GGUF chat model in transformers, with requests batched by a worker thread."""

    def __init__(self, gguf: Path, max_batch: int = 32, gather_s: float = 0.02) -> None:
        self.tokenizer, self.model = load_converted(gguf)  # embedkit.gguf: converted once, then kept
        self.model.eval()
        self.tokenizer.padding_side = "left"
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self.max_batch, self.gather_s = max_batch, gather_s
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._vocabulary: Vocabulary | None = None  # built when a request first asks for a literal JSON value
        self._queue: queue.Queue[Request] = queue.Queue()
        threading.Thread(target=self._serve, name="embedded-llm", daemon=True).start()

    def submit(self, messages: list[dict[str, Any]], params: dict[str, Any], seed: int) -> concurrent.futures.Future:
        """Queue one chat completion; the future's result is an OpenAI-style completion dict."""
        req = Request(messages, params, seed, schema_fields(params.get("response_format")))
        self._queue.put(req)
        return req.future

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.gather_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            # a request whose caller gave up (a client timeout cancels its future) is not generated; the others
            # are marked running, so a late cancel cannot make `set_result` raise and end this thread (which
            # left every later request of the process waiting forever)
            batch = [req for req in batch if req.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                answers = self.generate(batch)
            except BaseException as exc:  # noqa: BLE001 - every waiting request hears of it
                for req in batch:
                    req.future.set_exception(exc)
                continue
            for req, answer in zip(batch, answers):
                req.future.set_result(answer)

    def generate(self, batch: list[Request]) -> list[dict[str, Any]]:
        """Answer every request of `batch`: plain ones in one round, structured ones one field per round."""
        prompts = [self.tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
                   for r in batch]
        texts = [""] * len(batch)
        prompt_tokens = [0] * len(batch)
        first = True
        while True:  # round 1: plain requests and every first field; then one more field per round
            rows = [i for i, r in enumerate(batch)
                    if (first and not r.fields) or (r.pending is not None and (first or r.budget > 0))]
            if not rows:
                break
            prefixes = [batch[i].answer_prefix() if batch[i].pending else "" for i in rows]
            outs, counts, capped = self._round([batch[i] for i in rows],
                                               [prompts[i] + p for i, p in zip(rows, prefixes)])
            for i, text, (n_prompt, n_new), cap in zip(rows, outs, counts, capped):
                req = batch[i]
                req.used += n_new
                req.capped |= cap
                prompt_tokens[i] = prompt_tokens[i] or n_prompt
                if req.pending:
                    req.take_value(text, cap)
                else:
                    texts[i] = text
            first = False
        answers = []
        for i, req in enumerate(batch):
            if req.truncated is not None:
                text, stopped = req.truncated, False
            elif req.fields and len(req.values) < len(req.fields):  # out of tokens before this field began
                text, stopped = req.answer_prefix(), False
            elif req.fields:
                text, stopped = json.dumps(req.values, ensure_ascii=False), False
            else:
                text, stopped = req.cut_at_stop(texts[i])
            finish = "length" if req.capped and not stopped else "stop"
            answers.append({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                            "usage": {"prompt_tokens": prompt_tokens[i], "completion_tokens": req.used,
                                      "total_tokens": prompt_tokens[i] + req.used}})
        return answers

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        kv = "cache" if self._cache_arg == "cache" else "past_key_values"
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1, **{kv: cache})

    def _round(self, requests: list[Request], prompts: list[str]) -> tuple[list[str], list[tuple[int, int]], list[bool]]:
        """Generate for every prompt at once: each row's text, (prompt tokens, new tokens) and whether it hit its
        token budget. The prompts' common beginning (the packaged prompts' instructions and examples) is run
        once and shared; rows that end leave the batch."""
        from transformers import DynamicCache

        rows = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if self._vocabulary is None and any(k != "string" for r in requests for _, k in r.fields):
            self._vocabulary = Vocabulary(self.tokenizer, self.model.config.vocab_size)
        sampler = RowSampler(requests, self.tokenizer, self._vocabulary)
        n = len(rows)
        common = shared_prefix(rows) if n > 1 else 0
        cache = DynamicCache()
        with torch.inference_mode():
            if common >= MIN_SHARED:
                self._forward(torch.tensor([rows[0][:common]]), torch.ones(1, common, dtype=torch.long),
                              torch.arange(common)[None], cache)
                cache.batch_repeat_interleave(n)
            else:
                common = 0
            rest = [r[common:] for r in rows]
            width = max(len(r) for r in rest)
            ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rest])
            mask = torch.cat([torch.ones(n, common, dtype=torch.long),
                              torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest])], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self._forward(ids, mask, positions[:, common:], cache).logits[:, -1].float()
            last = positions[:, -1]
            generated: list[list[int]] = [[] for _ in range(n)]
            alive = list(range(n))
            while True:
                keep = []
                for k, row in enumerate(alive):
                    token = sampler.next(row, generated[row], logits[k])
                    if token is not None and token != self.eos:
                        generated[row].append(token)
                        keep.append(k)
                if not keep:
                    break
                if len(keep) < len(alive):
                    index = torch.tensor(keep)
                    cache.batch_select_indices(index)
                    mask, last = mask[index], last[index]
                    alive = [alive[k] for k in keep]
                mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=torch.long)], dim=1)
                last = last + 1
                step = torch.tensor([[generated[row][-1]] for row in alive])
                logits = self._forward(step, mask, last[:, None], cache).logits[:, -1].float()
        texts = [self.tokenizer.decode(g, skip_special_tokens=True) for g in generated]
        return texts, [(len(r), len(g)) for r, g in zip(rows, generated)], sampler.capped
