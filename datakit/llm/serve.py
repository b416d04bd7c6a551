"""The embedded model behind an OpenAI-compatible HTTP endpoint (`/v1/models`, `/v1/chat/completions`).

`datakit serve-llm --model smollm2 --port 8080` (or `python -m datakit.llm.serve`) serves a GGUF through the
transformers runtime (`gguf_transformers`), with no compiler and no extra: requests arriving together are decoded
together. A recipe then reaches it through litellm's `openai/` provider (`llm.model: openai/smollm2`,
`llm.api_base: http://127.0.0.1:8080/v1`), the path every hosted OpenAI-compatible provider takes. The tests use
it as their real local server; `response_format` (`json_schema` or `json_object`) is honoured as llama.cpp's
server honours it (the answer follows the schema's fields).
"""
from __future__ import annotations

import argparse
import json
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from datakit.llm.embedded import EmbeddedModelError, gguf_path, request_seed

_PARAMS = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty",
           "repeat_penalty", "response_format")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], model: str, api_key: str | None = None) -> None:
        from datakit.llm.gguf_transformers import TransformersRuntime

        self.model_name, self.api_key = model, api_key
        self.runtime = TransformersRuntime(gguf_path(model))
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:  # quiet: a test or a build logs what matters
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorised(self) -> bool:
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            self._error(401, "Incorrect API key provided", "invalid_request_error")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._authorised():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model",
                                                         "owned_by": "datakit"}]})
        else:
            self._error(404, f"no route {self.path}", "not_found_error")

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}", "not_found_error")
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"bad request: {exc}", "invalid_request_error")
            return
        if body.get("model") not in (None, self.server.model_name):
            self._error(404, f"The model `{body.get('model')}` does not exist (this server has "
                             f"{self.server.model_name!r})", "not_found_error")
            return
        params = {k: body[k] for k in _PARAMS if body.get(k) is not None}
        try:
            out = self.server.runtime.submit(messages, params, request_seed(messages, params)).result()
        except Exception as exc:  # noqa: BLE001 - the client hears of it as a server error
            self._error(500, f"{type(exc).__name__}: {exc}", "server_error")
            return
        out.update(id=f"chatcmpl-{uuid.uuid4().hex[:24]}", object="chat.completion", created=int(time.time()),
                   model=self.server.model_name)
        out["choices"][0]["index"] = 0
        self._send(200, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a packaged short name (smollm2) or a .gguf path")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: none)")
    args = parser.parse_args(argv)
    try:
        server = Server((args.host, args.port), args.model, args.api_key)
    except EmbeddedModelError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"serving {args.model} at http://{args.host}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
