"""`adl dashboard`: a local web page over loaded models and finished runs: steer live, read per-token
differences of any text, browse an audit's tokens, alpha path and samples, switch between runs.

The server is the standard library's `http.server`: the page is one static file and four JSON endpoints, so
a web framework would add a dependency and nothing else. The models load once; requests that run them take
turns (one lock), as one device serves them anyway. It binds to loopback unless told otherwise: whoever
reaches it can run the models.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from adl_jax import io
from adl_jax.errors import AdlError, InputError, UsageError
from adl_jax.experiments import steer as st
from adl_jax.method.diff import DiffResult
from adl_jax.method.lens import LENS, LensResult
from adl_jax.method.tokens import differences
from adl_jax.models.load import Model
from adl_jax.report.dashboard import dashboard_page

SLIDER_MAX = 4.0  # the slider's end: text stays coherent only below alpha ~2 (see SteeringSettings.quick)
MAX_TEXT_TOKENS = 512


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse to serve beyond this machine unless asked: every address `host` names must be loopback."""
    if allow_remote:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise UsageError(f"--host {host}: no such address; the default is 127.0.0.1") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise UsageError(
            f"--host {host} is reachable from other machines, and whoever reaches the dashboard runs the models: "
            "serve on 127.0.0.1 (the default), or give --allow-remote to mean it"
        )


class Dashboard:
    """The models and runs the page works on; each method answers one endpoint with a JSON-able dict."""

    def __init__(self, base: Model, ft: Model, runs=()):
        self.base, self.ft = base, ft
        self.runs: dict[str, dict] = {}
        self.lock = threading.Lock()
        for run in runs:
            self.add_run(run)

    def add_run(self, path: str | Path) -> str:
        """Load a finished run of these very models; its name is the path as given."""
        path = Path(str(path).strip())
        if not str(path) or str(path) == ".":
            raise UsageError("give the path of a run directory (written by adl diff or adl audit)")
        if not path.is_dir():
            raise InputError(f"no run directory at {path}: give a directory written by adl diff or adl audit")
        meta = st.run_meta(path)
        st.check_models(meta, self.base.spec, self.ft.spec)
        self.runs[str(path)] = _overview(path, DiffResult.load(path))
        return str(path)

    def overview(self) -> dict:
        defaults = st.SteerSettings()
        return {
            "runs": list(self.runs.values()),
            "defaults": {
                "alpha": defaults.alphas[0],
                "alpha_max": st.ALPHA_RANGE[1],
                "slider_max": SLIDER_MAX,
                "seed": defaults.seed,
                "samples": defaults.samples,
                "new_tokens": defaults.new_tokens,
                "temperature": defaults.temperature,
            },
        }

    def open_run(self, body: dict) -> dict:
        name = self.add_run(_field(body, "path", str))
        return {"name": name, "runs": list(self.runs.values())}

    def steer(self, body: dict) -> dict:
        """What `adl steer RUN --prompt P --alpha A` prints for the same settings: one prompt, one alpha."""
        run = self._run(body)
        prompt = _field(body, "prompt", str)
        settings = st.SteerSettings(
            alphas=(_field(body, "alpha", float),),
            position=_field(body, "position", int),
            steer_model=_field(body, "model", str),
            seed=_field(body, "seed", int),
            samples=_field(body, "samples", int),
            new_tokens=_field(body, "new_tokens", int),
            temperature=_field(body, "temperature", float),
        )
        vector, layer, _ = st.run_vector(run["path"], settings.position)
        model = self.ft if settings.steer_model == "finetuned" else self.base
        with self.lock:
            (result,) = st.steer(model, [prompt], vector, settings, layer)
        alpha = settings.alphas[0]
        return {
            **result,
            "steered": result["steered"][str(alpha)],
            "alpha": alpha,
            "layer": layer,
            "model": settings.steer_model,
        }

    def tokens(self, body: dict) -> dict:
        text = _field(body, "text", str)
        if not text.strip():
            raise UsageError("type a text to compare the models on")
        with self.lock:
            (diff,) = differences(self.base, self.ft, [text], max_tokens=MAX_TEXT_TOKENS)
        return {"tokens": diff.to_json(self.base.tokenizer), "mean_kl": float(diff.kl.mean())}

    def _run(self, body: dict) -> dict:
        name = _field(body, "run", str)
        if name not in self.runs:
            raise UsageError(f"no run {name!r} is open; open it first")
        return self.runs[name]


def _field(body: dict, name: str, kind):
    """A request field as `kind`, or a message naming the field."""
    if name not in body or body[name] in ("", None):
        raise UsageError(f"{name} is missing: fill it in")
    try:
        return kind(body[name])
    except (TypeError, ValueError):
        raise UsageError(f"{name} {body[name]!r} is not a {kind.__name__}") from None


def _overview(path: Path, res: DiffResult) -> dict:
    """What the page shows of a run: its identity, the lens tokens (when the run has lenses) and the audit's
    steering (when it has one)."""
    out = {
        "name": str(path),
        "path": str(path),
        "base": res.meta["base"],
        "finetuned": res.meta["finetuned"],
        "layer": res.meta["layer"],
        "samples": res.meta["samples"],
        "delta_norms": [float(x) for x in np.linalg.norm(res.delta, axis=-1)],
        "lenses": None,
        "steering": [],
        "unsteered": {},
    }
    if (path / LENS).exists():
        lenses = LensResult.from_json(io.read_json(path / LENS))
        out["lenses"] = [
            {
                "position": p["position"],
                "chosen_scale": str(p["patchscope_scale"]),
                "logit_lens": p["logit_lens"]["delta"].tokens[:20],
                "base_mean": p["logit_lens"]["base_mean"].tokens[:20],
                "patchscope": {s: ts.tokens[:20] for s, ts in p["patchscope"].items()},
            }
            for p in lenses.positions
        ]
    if (path / "generations_unsteered.json").exists():
        out["unsteered"] = io.read_json(path / "generations_unsteered.json")
    for f in sorted(path.glob("steering_pos*.json")):
        s = io.read_json(f)
        first = next(iter(s["search"]["paths"].values()), [])
        out["steering"].append(
            {
                "position": s["position"],
                "alpha": s["search"]["alpha"],
                "path": [{"alpha": x["alpha"], "passed": x["passed"]} for x in first],
                "steered": s["steered"],
            }
        )
    return out


class _Handler(BaseHTTPRequestHandler):
    board: Dashboard  # set on the subclass `make_server` builds

    def do_GET(self):
        if self.path == "/":
            self._send(200, dashboard_page().encode(), "text/html; charset=utf-8")
        elif self.path == "/api/overview":
            self._json(200, self.board.overview())
        else:
            self._json(404, {"error": f"no page {self.path}"})

    def do_POST(self):
        routes = {"/api/steer": self.board.steer, "/api/tokens": self.board.tokens, "/api/run": self.board.open_run}
        if self.path not in routes:
            return self._json(404, {"error": f"no endpoint {self.path}"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not isinstance(body, dict):
                raise UsageError("send a JSON object")
            self._json(200, routes[self.path](body))
        except (AdlError, ValueError, OSError) as e:  # bad input: its message, for the page to show
            self._json(400, {"error": " ".join(str(e).split())})
        except Exception as e:  # a bug: a short line for the page, the traceback for the terminal
            traceback.print_exc()
            self._json(
                500, {"error": f"internal error ({type(e).__name__}: {e}); the server's terminal has the traceback"}
            )

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # one line per request on stderr, without the default's noise
        print(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}", file=sys.stderr)


def make_server(board: Dashboard, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A server for `board` on host:port (port 0: any free port); call serve_forever() on it."""
    handler = type("DashboardHandler", (_Handler,), {"board": board})
    return ThreadingHTTPServer((host, port), handler)
