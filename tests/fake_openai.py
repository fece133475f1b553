"""A local OpenAI-compatible chat-completions server for tests: real HTTP on 127.0.0.1, scripted per test.

    with FakeOpenAI(api_key="sk-test") as fake:
        fake.push(error(429, retry_after=1), "VERDICT: COHERENT")   # served in order ...
        fake.handler = lambda request: reply("...")                 # ... then this answers the rest
        settings = GraderSettings(fake.url, "fake-model", "sk-test")

Strings stand for `reply(string)`. Every request is recorded (`fake.requests`), including ones refused for a
wrong key. A request with nothing scripted for it, or whose handler raises, gets HTTP 400 saying so, which
clients report without retrying.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclasses.dataclass
class Response:
    status: int = 200
    body: dict | str = ""  # a dict is sent as JSON, a string as it is (to send broken bodies)
    headers: dict = dataclasses.field(default_factory=dict)
    disconnect: bool = False  # close the connection without answering


@dataclasses.dataclass
class Request:
    path: str
    headers: dict  # names lower-cased
    body: dict

    @property
    def user(self) -> str:
        """The last user message's text."""
        return [m["content"] for m in self.body["messages"] if m["role"] == "user"][-1]


def reply(
    content: str | None = None, *, tool_calls=(), prompt_tokens: int = 10, completion_tokens: int = 5
) -> Response:
    """A completion; `tool_calls` are (name, arguments dict) pairs."""
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(tool_calls)
        ]
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": "fake",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return Response(body=body)


def error(status: int, message: str = "fake error", *, retry_after: float | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Response(status, {"error": {"message": message, "type": "fake", "code": status}}, headers)


def disconnect() -> Response:
    return Response(disconnect=True)


class FakeOpenAI:
    """The server runs in a daemon thread from construction until `close()` (or the end of a `with`)."""

    def __init__(self, handler: Callable[[Request], Response | str] | None = None, *, api_key: str | None = None):
        self.handler, self.api_key = handler, api_key
        self.requests: list[Request] = []
        self._queue: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def push(self, *responses: Response | str) -> None:
        with self._lock:
            self._queue.extend(responses)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _respond(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
            if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return error(401, "Incorrect API key provided")
            if request.path != "/v1/chat/completions":
                return error(404, f"no route {request.path}")
            queued = self._queue.popleft() if self._queue else None
        try:
            response = queued if queued is not None else self.handler(request) if self.handler else None
        except Exception as e:  # noqa: BLE001 - reported to the client (no retry) instead of a dropped connection
            return error(400, f"fake server: the handler raised {e!r}")
        if response is None:
            return error(400, "fake server: no scripted response left")
        return reply(response) if isinstance(response, str) else response

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                response = fake._respond(Request(self.path, headers, json.loads(raw or b"{}")))
                if response.disconnect:
                    self.close_connection = True
                    return
                data = json.dumps(response.body).encode() if isinstance(response.body, dict) else response.body.encode()
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep test output quiet
                pass

        return Handler
