"""LLM graders over any OpenAI-compatible chat-completions endpoint (OpenAI, OpenRouter, vLLM, ...).

The client caches every call on disk, keyed by a hash of the full request, so rerunning an audit costs no
calls and reproduces its verdicts. It retries rate limits, server errors and dropped connections with
capped, jittered exponential backoff (or as long as Retry-After says), and fails with a message naming
the environment variable to fix. Only the standard library speaks HTTP: no runtime dependency for this.

The judges on top parse answers strictly. A malformed answer is asked again as a fresh sample (the next
sample index: another seed and another cache entry, so reruns stay reproducible) and after `attempts`
tries becomes UNKNOWN: never counted as either verdict. Each judge is a plain function of a `Grader`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

from adl_jax.io import cache_root, read_json, write_json
from adl_jax.judging.prompts import coherence_messages, relevance_messages, tournament_messages
from adl_jax.judging.verdicts import COHERENT, INCOHERENT, UNKNOWN, Judge

RELEVANT, IRRELEVANT = "RELEVANT", "IRRELEVANT"
OPENAI_URL = "https://api.openai.com/v1"
log = logging.getLogger(__name__)


class GraderError(RuntimeError):
    """The endpoint gave no answer: unreachable, refused the request, or kept failing."""


class MalformedAnswer(ValueError):
    """The grader answered, but not in the format its prompt asked for."""


@dataclasses.dataclass(frozen=True)
class GraderSettings:
    """Where a grader lives. The key stays out of reprs and logs; `prefix` names the variables in errors."""

    base_url: str
    model: str
    api_key: str | None = dataclasses.field(default=None, repr=False)
    prefix: str = "ADL_GRADER"

    @classmethod
    def from_env(cls, prefix: str = "ADL_GRADER", environ=None) -> GraderSettings | None:
        """From `{prefix}_BASE_URL` (default OpenAI), `{prefix}_MODEL`, `{prefix}_API_KEY`; None when none is set."""
        env = os.environ if environ is None else environ
        url, model, key = (env.get(f"{prefix}_{name}") or None for name in ("BASE_URL", "MODEL", "API_KEY"))
        if model is None:
            if url or key:
                raise ValueError(f"{prefix}_MODEL is not set, though {prefix}_BASE_URL or {prefix}_API_KEY is")
            return None
        return cls((url or OPENAI_URL).rstrip("/"), model, key, prefix)


@dataclasses.dataclass
class GraderStats:
    """What grading cost: API calls answered, calls served from the cache, attempts retried, tokens billed."""

    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Reply:
    message: dict  # the assistant message as the API returned it: append it to the history when using tools
    finish_reason: str | None
    cached: bool

    @property
    def content(self) -> str:
        return self.message.get("content") or ""

    @property
    def tool_calls(self) -> list[dict]:
        return self.message.get("tool_calls") or []


def default_cache_dir() -> Path:
    return cache_root() / "graders"


class Grader:
    """A cached, retrying chat-completions client; thread-safe, so judges may keep `workers` calls in flight."""

    def __init__(
        self,
        settings: GraderSettings,
        *,
        cache_dir: str | Path | None = None,
        timeout: float = 120.0,
        retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        workers: int = 8,
    ):
        self.settings = settings
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.workers = workers
        self.stats = GraderStats()
        self._lock = threading.Lock()

    def chat(
        self,
        messages: list[dict],
        *,
        temperature: float | None = None,
        sample: int = 0,
        tools: list[dict] | None = None,
        tool_choice=None,
        **extra,
    ) -> Reply:
        """One completion. `sample` is sent as the seed and is part of the cache key: a new index is a fresh
        sample. `temperature` None leaves the endpoint's default (some models accept no other); `extra`
        (max_tokens, ...) goes into the request as is."""
        body = {"model": self.settings.model, "messages": messages, "seed": sample, **extra}
        if temperature is not None:
            body["temperature"] = temperature
        if tools:
            body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        path = self._cache_path(body)
        if path.exists():
            response, cached = read_json(path)["response"], True
        else:
            response, cached = self._post(body), False
            write_json(path, {"request": body, "response": response})
        usage = response.get("usage") or {}
        with self._lock:
            if cached:
                self.stats.cache_hits += 1
            else:
                self.stats.calls += 1
                self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        choice = response["choices"][0]
        return Reply(choice["message"], choice.get("finish_reason"), cached)

    def _cache_path(self, body: dict) -> Path:
        request = json.dumps({"base_url": self.settings.base_url, **body}, sort_keys=True, ensure_ascii=False)
        key = hashlib.sha256(request.encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _post(self, body: dict) -> dict:
        s = self.settings
        url = f"{s.base_url}/chat/completions"
        headers = {"Content-Type": "application/json"}
        if s.api_key:
            headers["Authorization"] = f"Bearer {s.api_key}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            wait = None
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=self.timeout) as r:
                    return _completion(r.read(), url)
            except urllib.error.HTTPError as e:
                detail = _error_detail(e.read())
                if e.code in (401, 403):
                    fix = f"set {s.prefix}_API_KEY" if not s.api_key else f"check {s.prefix}_API_KEY"
                    raise GraderError(f"{url} refused the request (HTTP {e.code}: {detail}); {fix}") from None
                if e.code != 429 and e.code < 500:
                    fix = f"check {s.prefix}_MODEL={s.model!r} and {s.prefix}_BASE_URL"
                    raise GraderError(f"{url} rejected the request (HTTP {e.code}: {detail}); {fix}") from None
                failure, unreachable, wait = f"HTTP {e.code}: {detail}", False, _retry_after(e.headers)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                failure, unreachable = str(getattr(e, "reason", None) or e) or type(e).__name__, True
            if attempt == self.retries:
                break
            if wait is None:
                wait = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
            log.warning("grader %s: %s; retrying in %.1f s", url, failure, wait)
            with self._lock:
                self.stats.retries += 1
            time.sleep(wait)
        if unreachable:
            raise GraderError(
                f"cannot reach the grader at {url} ({failure}) in {self.retries + 1} attempts; "
                f"is the server up and {s.prefix}_BASE_URL right?"
            )
        raise GraderError(f"the grader at {url} still fails after {self.retries + 1} attempts ({failure})")


def _completion(raw: bytes, url: str) -> dict:
    try:
        response = json.loads(raw)
        if isinstance(response["choices"][0]["message"], dict):
            return response
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    raise GraderError(f"{url} answered with no chat completion: {raw[:300]!r}")


def _error_detail(raw: bytes) -> str:
    """The API's error message when it sent one (`{"error": {"message": ...}}`), else the body's start."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:300].decode(errors="replace") or "no details"


def _retry_after(headers) -> float | None:
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), if it did."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# ---- answer parsing: `NAME: value` lines, markdown decoration tolerated, everything else strict ----

_DECOR = r"[\s*_`#>-]*"


def _fields(text: str, name: str) -> list[tuple[str, str]]:
    """(name, value) of every line `name: value`; `name` is a regex."""
    pattern = rf"^{_DECOR}({name}){_DECOR}:{_DECOR}(.*?)[\s*_`.]*$"
    return re.findall(pattern, text, re.IGNORECASE | re.MULTILINE)


def one_field(text: str, name: str) -> str:
    found = _fields(text, name)
    if len(found) != 1:
        raise MalformedAnswer(f"expected one '{name}:' line, found {len(found)} in {text[-300:]!r}")
    return found[0][1].upper()


def parse_coherence(text: str) -> str:
    verdict = one_field(text, "VERDICT")
    if verdict not in (COHERENT, INCOHERENT):
        raise MalformedAnswer(f"verdict {verdict!r} is neither {COHERENT} nor {INCOHERENT}")
    return verdict


def parse_relevance(text: str, n: int) -> list[str]:
    """One RELEVANT/IRRELEVANT per token 1..n, each exactly once."""
    verdicts: dict[int, str] = {}
    for number, value in _fields(text, r"\d+"):
        i, value = int(number), value.upper()
        if value not in (RELEVANT, IRRELEVANT) or i in verdicts or not 1 <= i <= n:
            raise MalformedAnswer(f"bad line '{number}: {value}' (tokens 1..{n}, each once, {RELEVANT}/{IRRELEVANT})")
        verdicts[i] = value
    if missing := [i for i in range(1, n + 1) if i not in verdicts]:
        raise MalformedAnswer(f"no verdict for tokens {missing} in {text[-300:]!r}")
    return [verdicts[i] for i in range(1, n + 1)]


def parse_tournament(text: str, sizes: list[int]) -> tuple[int, list[int]]:
    """(chosen set, its coherent tokens), 0-based; `sizes` are the sets' token counts."""
    best = one_field(text, "BEST")
    number = re.fullmatch(r"(?:SET\s*)?(\d+)", best)
    if not number or not 1 <= int(number[1]) <= len(sizes):
        raise MalformedAnswer(f"BEST {best!r} is not a set number 1..{len(sizes)}")
    k = int(number[1]) - 1
    listed = one_field(text, "COHERENT")
    if listed == "NONE":
        return k, []
    if not re.fullmatch(r"\d+(\s*,\s*\d+)*", listed):
        raise MalformedAnswer(f"COHERENT {listed!r} is not a comma-separated list of numbers or NONE")
    numbers = [int(x) for x in listed.split(",")]
    if len(set(numbers)) != len(numbers) or not all(1 <= i <= sizes[k] for i in numbers):
        raise MalformedAnswer(f"COHERENT {listed!r} repeats a number or leaves tokens 1..{sizes[k]} of set {k + 1}")
    return k, [i - 1 for i in numbers]


# ---- judges ----


def ask_parsed(grader: Grader, messages: list[dict], parse: Callable[[str], object], attempts: int, first: int = 0):
    """The first well-formed answer among `attempts` fresh samples (indices from `first`); None when every
    one is malformed."""
    for sample in range(first, first + attempts):
        text = grader.chat(messages, sample=sample).content
        try:
            return parse(text)
        except MalformedAnswer as e:
            log.warning("malformed grader answer (sample %d of %d): %s", sample - first + 1, attempts, e)
    return None


def _map(grader: Grader, fn, items) -> list:
    with ThreadPoolExecutor(grader.workers) as pool:
        return list(pool.map(fn, items))


def judge_coherence(grader: Grader, text: str, *, attempts: int = 3) -> str:
    """COHERENT / INCOHERENT for one generated text; UNKNOWN when no well-formed answer came."""
    return ask_parsed(grader, coherence_messages(text), parse_coherence, attempts) or UNKNOWN


def coherence_judge(grader: Grader, *, attempts: int = 3) -> Judge:
    """`judge_coherence` in the shape the alpha search takes, (prompts, texts) -> verdicts; texts judged in
    parallel. The grader sees the text alone: coherence does not depend on the prompt."""
    return lambda prompts, texts: _map(grader, lambda t: judge_coherence(grader, t, attempts=attempts), texts)


def judge_relevance(
    grader: Grader, description: str, frequent: list[str], tokens: list[str], *, attempts: int = 3
) -> list[str]:
    """Per token RELEVANT / IRRELEVANT / UNKNOWN to the finetuning objective `description`, given the
    finetuning data's most `frequent` tokens. The list is judged in three cyclic rotations (starting at 0,
    n/3, 2n/3) against position bias; a token is RELEVANT only if all three runs say so, IRRELEVANT if any
    run says so, and UNKNOWN when a run gave no well-formed answer and the others all said RELEVANT."""
    n = len(tokens)
    orders = [[(i + k * n // 3) % n for i in range(n)] for k in range(3)] if n else []

    def run(order):
        return ask_parsed(
            grader,
            relevance_messages(description, frequent, [tokens[i] for i in order]),
            lambda text: parse_relevance(text, n),
            attempts,
        )

    votes: list[list[str]] = [[] for _ in tokens]
    for order, verdicts in zip(orders, _map(grader, run, orders)):
        for pos, i in enumerate(order):
            votes[i].append(verdicts[pos] if verdicts else UNKNOWN)
    return [IRRELEVANT if IRRELEVANT in v else RELEVANT if set(v) == {RELEVANT} else UNKNOWN for v in votes]


def scale_tournament(
    grader: Grader, by_scale: dict[float, list[str]], *, attempts: int = 3, group: int = 10
) -> tuple[float | None, list[str]]:
    """The patchscope scale whose tokens are most semantically coherent, and those coherent tokens.

    Scales (sorted) are split evenly into groups of at most `group`; the grader picks each group's most
    coherent token set (ties: more coherent tokens) and its winner advances, until one group is left,
    whose verdict gives the coherent tokens. Filter out junk tokens first (`lens.gradable`). A group
    without a well-formed answer advances nobody (logged); (None, []) when no scale survives.
    """

    def play(scales):
        sets = [by_scale[s] for s in scales]
        return ask_parsed(
            grader, tournament_messages(sets), lambda text: parse_tournament(text, list(map(len, sets))), attempts
        )

    if group < 2:
        raise ValueError("a tournament needs groups of at least 2 scales")
    alive = sorted(by_scale)
    while True:
        n_groups = -(-len(alive) // group)
        groups = [alive[g * len(alive) // n_groups : (g + 1) * len(alive) // n_groups] for g in range(n_groups)]
        winners = []
        for scales, result in zip(groups, _map(grader, play, groups)):
            if result is None:
                log.warning("no well-formed tournament answer for scales %s: none of them advances", scales)
                continue
            k, coherent = result
            winners.append((scales[k], [by_scale[scales[k]][i] for i in coherent]))
        if len(winners) <= 1:
            return winners[0] if winners else (None, [])
        alive = [scale for scale, _ in winners]
