"""A local stand-in for Anthropic's Messages API, for the real `anthropic` client (point `base_url` at `.url`).

`POST /v1/messages` answers from a script, one item per request, in order:
- a response body (dict; see readfirst.agents.llm.message_json) or a callable(request body) -> body;
- `Fail(status, retry_after=None)`: an error in the API's JSON shape (429 rate_limit_error, 500 api_error, ...);
- `Hang(seconds)`: hold the request past the client's timeout, then drop it (stop() wakes it early).
It checks what the real API checks and the client could get wrong: the key and version headers, model,
max_tokens, messages starting with the user, and every tool_use answered by a tool_result in the next message.
A malformed request is a 400 invalid_request_error that does not consume a script item. Every request is
recorded (`requests`, `count`), with its arrival time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


@dataclass(frozen=True)
class Fail:
    status: int
    retry_after: float | None = None
    message: str = "scripted failure"


@dataclass(frozen=True)
class Hang:
    seconds: float


ScriptItem = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | Fail | Hang


def validate(body: Any, headers: Any) -> str | None:
    """Why the real API would refuse this request with a 400/401, or None."""
    if not headers.get("x-api-key") and not (headers.get("authorization") or "").startswith("Bearer "):
        return "401:an x-api-key or authorization header is required"
    if not headers.get("anthropic-version"):
        return "anthropic-version header is required"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    messages = body["messages"]
    if not messages or messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant"
        content = message.get("content")
        if isinstance(content, str) or message["role"] != "assistant":
            continue
        tool_ids = [b["id"] for b in content if b.get("type") == "tool_use"]
        if not tool_ids:
            continue
        following = messages[i + 1]["content"] if i + 1 < len(messages) else None
        answered = {b.get("tool_use_id") for b in following or [] if isinstance(b, dict)
                    and b.get("type") == "tool_result"}
        if not isinstance(following, list) or set(tool_ids) - answered:
            return (f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(sorted(set(tool_ids) - answered))}")
    for tool in body.get("tools") or []:
        if not {"name", "input_schema"} <= set(tool):
            return "tools: each tool needs a name and an input_schema"
    return None


class FakeAnthropic:
    """Use as a context manager, or start()/stop(). `script` may be extended later with `add`."""

    def __init__(self, script: Iterable[ScriptItem] = ()):
        self.script: list[ScriptItem] = list(script)
        self.requests: list[dict[str, Any]] = []  # {"body", "headers", "time", "status"}
        self._next = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def remaining(self) -> int:
        return len(self.script) - self._next

    def add(self, *items: ScriptItem) -> None:
        with self._lock:
            self.script.extend(items)

    def start(self) -> FakeAnthropic:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                fake._handle(self, raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers, so no thread outlives the test
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one request -------------------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"null")
        except json.JSONDecodeError:
            body = None
        record = {"body": body, "headers": {k.lower(): v for k, v in handler.headers.items()}, "time": time.monotonic(), "status": None}
        with self._lock:
            self.requests.append(record)
        if handler.path.split("?")[0] != "/v1/messages":
            return self._send(handler, record, 404, _error(404, f"no route {handler.path}"))
        problem = validate(body, handler.headers)
        if problem:
            status, _, text = problem.partition(":") if problem.startswith("401:") else ("400", "", problem)
            return self._send(handler, record, int(status), _error(int(status), text))
        with self._lock:
            if self._next >= len(self.script):
                item: ScriptItem = Fail(500, message=f"fake server: script exhausted at request {self.count}")
            else:
                item = self.script[self._next]
                self._next += 1
        if isinstance(item, Hang):
            record["status"] = "hang"
            self._stopping.wait(item.seconds)
            handler.close_connection = True
            return None
        if isinstance(item, Fail):
            headers = {"retry-after": _seconds(item.retry_after)} if item.retry_after is not None else {}
            return self._send(handler, record, item.status, _error(item.status, item.message), headers)
        reply = item(body) if callable(item) else item
        return self._send(handler, record, 200, {**reply, "model": reply.get("model") or body["model"]})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, record: dict, status: int, payload: dict,
              headers: dict[str, str] | None = None) -> None:
        record["status"] = status
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            handler.send_header("request-id", f"req_fake_{id(record):x}")
            # No x-should-retry header: the tests must prove the SDK retries on the status code itself.
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing to answer


def _error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
