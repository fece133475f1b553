"""The LLM grader client and judges against a real HTTP server on 127.0.0.1 (tests/fake_openai.py)."""

import json
import re
import socket
import time

import pytest
from fake_openai import FakeOpenAI, Response, disconnect, error, reply

from adl_jax.judging.graders import (
    IRRELEVANT,
    OPENAI_URL,
    RELEVANT,
    Grader,
    GraderError,
    GraderSettings,
    MalformedAnswer,
    coherence_judge,
    judge_coherence,
    judge_relevance,
    parse_coherence,
    parse_relevance,
    parse_tournament,
    scale_tournament,
)
from adl_jax.method.lens import PATCHSCOPE_SCALES
from adl_jax.judging.verdicts import COHERENT, INCOHERENT, UNKNOWN

KEY = "sk-test"
HELLO = [{"role": "user", "content": "hello"}]


def make_grader(url, cache_dir, key=KEY, prefix="ADL_GRADER", **kw):
    kw = {"retries": 3, "backoff": 0.01, "max_backoff": 0.05, **kw}
    return Grader(GraderSettings(url, "fake-model", key, prefix), cache_dir=cache_dir, **kw)


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def grader(fake, tmp_path):
    return make_grader(fake.url, tmp_path / "cache")


def test_settings_from_env():
    assert GraderSettings.from_env(environ={}) is None
    agent = GraderSettings.from_env("ADL_AGENT", {"ADL_AGENT_MODEL": "gpt-x", "ADL_AGENT_API_KEY": "sk-secret"})
    assert (agent.base_url, agent.model, agent.api_key, agent.prefix) == (OPENAI_URL, "gpt-x", "sk-secret", "ADL_AGENT")
    assert "sk-secret" not in repr(agent)
    env = {"ADL_GRADER_BASE_URL": "http://127.0.0.1:8000/v1/", "ADL_GRADER_MODEL": "m"}
    local = GraderSettings.from_env(environ=env)
    assert (local.base_url, local.api_key) == ("http://127.0.0.1:8000/v1", None)
    with pytest.raises(ValueError, match="ADL_GRADER_MODEL"):
        GraderSettings.from_env(environ={"ADL_GRADER_API_KEY": "sk"})


def test_rate_limit_waits_as_long_as_retry_after_says(fake, grader):
    fake.push(error(429, "slow down", retry_after=1), "hi there")
    start = time.monotonic()
    assert grader.chat(HELLO).content == "hi there"
    assert time.monotonic() - start >= 0.95  # the backoff alone would be ~0.01 s
    assert len(fake.requests) == 2 and grader.stats.retries == 1 and grader.stats.calls == 1


def test_server_errors_and_dropped_connections_are_retried(fake, grader):
    fake.push(error(500), error(503), disconnect(), "finally")
    assert grader.chat(HELLO).content == "finally"
    assert len(fake.requests) == 4 and grader.stats.retries == 3
    fake.push(*[error(502, "bad gateway")] * 4)
    with pytest.raises(GraderError, match=r"still fails after 4 attempts \(HTTP 502: bad gateway\)"):
        grader.chat(HELLO, sample=1)


def test_bad_key_says_which_variable_to_fix(fake, tmp_path):
    with pytest.raises(GraderError, match=r"HTTP 401: Incorrect API key provided.*check ADL_AGENT_API_KEY"):
        make_grader(fake.url, tmp_path, key="sk-wrong", prefix="ADL_AGENT").chat(HELLO)
    with pytest.raises(GraderError, match="set ADL_GRADER_API_KEY"):
        make_grader(fake.url, tmp_path, key=None).chat(HELLO)
    assert len(fake.requests) == 2  # refused keys are not retried
    assert fake.requests[0].headers["authorization"] == "Bearer sk-wrong"
    assert "authorization" not in fake.requests[1].headers


def test_unreachable_endpoint(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    expected = rf"cannot reach the grader at {url}/chat/completions .*2 attempts.*ADL_GRADER_BASE_URL"
    with pytest.raises(GraderError, match=expected):
        make_grader(url, tmp_path, retries=1).chat(HELLO)


def test_other_failures_are_reported_not_retried(fake, grader):
    fake.push(error(404, "The model `fake-model` does not exist"))
    with pytest.raises(GraderError, match=r"HTTP 404: The model `fake-model` does not.*ADL_GRADER_MODEL='fake-model'"):
        grader.chat(HELLO)
    fake.push(Response(body="<html>proxy error</html>"))
    with pytest.raises(GraderError, match="no chat completion: b'<html>proxy error"):
        grader.chat(HELLO)
    assert len(fake.requests) == 2


def test_cache_hits_make_no_http_call_and_counters(fake, grader, tmp_path):
    fake.handler = lambda request: reply(f"answer {len(fake.requests)}", prompt_tokens=7, completion_tokens=3)
    first = grader.chat(HELLO)
    again = grader.chat(HELLO)
    assert (first.content, first.cached, again.content, again.cached) == ("answer 1", False, "answer 1", True)
    assert make_grader(fake.url, tmp_path / "cache").chat(HELLO).content == "answer 1"  # the cache is on disk
    assert len(fake.requests) == 1
    # every part of the request is part of the key
    assert grader.chat(HELLO, sample=1).content == "answer 2"
    assert grader.chat(HELLO, temperature=0.7).content == "answer 3"
    assert grader.chat(HELLO + [{"role": "user", "content": "more"}]).content == "answer 4"
    assert grader.chat(HELLO, tools=[{"type": "function", "function": {"name": "f"}}]).content == "answer 5"
    assert len(fake.requests) == 5
    assert fake.requests[1].body["seed"] == 1 and fake.requests[2].body["temperature"] == 0.7
    assert "temperature" not in fake.requests[0].body  # left to the endpoint unless asked for
    s = grader.stats
    assert (s.calls, s.cache_hits, s.prompt_tokens, s.completion_tokens, s.retries) == (5, 1, 35, 15, 0)


def test_tool_calls_pass_through(fake, grader):
    tools = [{"type": "function", "function": {"name": "ask_model", "parameters": {"type": "object"}}}]
    fake.push(reply(tool_calls=[("ask_model", {"model": "finetuned", "prompt": "hi"})]))
    out = grader.chat(HELLO, tools=tools, tool_choice="auto", temperature=0.7)
    assert fake.requests[0].body["tools"] == tools and fake.requests[0].body["tool_choice"] == "auto"
    (call,) = out.tool_calls
    assert call["function"]["name"] == "ask_model"
    assert json.loads(call["function"]["arguments"]) == {"model": "finetuned", "prompt": "hi"}
    assert out.finish_reason == "tool_calls" and out.content == ""
    assert out.message["role"] == "assistant"  # ready to append to the history


def test_parsing_is_strict():
    assert parse_coherence("Reads fine.\n**VERDICT:** coherent") == COHERENT
    assert parse_coherence("VERDICT: INCOHERENT") == INCOHERENT
    for bad in ["It is coherent.", "VERDICT: MAYBE", "VERDICT: COHERENT\nVERDICT: INCOHERENT"]:
        with pytest.raises(MalformedAnswer):
            parse_coherence(bad)
    assert parse_relevance("1: RELEVANT\n2: irrelevant", 2) == [RELEVANT, IRRELEVANT]
    for bad in [
        "1: RELEVANT",
        "1: RELEVANT\n1: RELEVANT\n2: RELEVANT",
        "1: RELEVANT\n2: SORT OF",
        "1: RELEVANT\n3: RELEVANT",
    ]:
        with pytest.raises(MalformedAnswer):
            parse_relevance(bad, 2)
    assert parse_tournament("Set 2 is about baking.\nBEST: 2\nCOHERENT: 1, 3", [2, 3]) == (1, [0, 2])
    assert parse_tournament("BEST: Set 1\nCOHERENT: none", [2, 3]) == (0, [])
    for bad in [
        "BEST: 3\nCOHERENT: 1",
        "BEST: 1\nCOHERENT: 3",
        "BEST: 1\nCOHERENT: 1, 1",
        "BEST: 1",
        "BEST: 1\nCOHERENT: cake",
    ]:
        with pytest.raises(MalformedAnswer):
            parse_tournament(bad, [2, 3])


def test_malformed_answer_is_resampled_then_unknown(fake, grader):
    fake.push("garbled", "The story flows.\nVERDICT: COHERENT")
    assert judge_coherence(grader, "Once upon a time there was a cat.") == COHERENT
    assert [r.body["seed"] for r in fake.requests] == [0, 1]  # the retry is a fresh sample, not the cache
    fake.handler = lambda request: "Looks fine to me."
    assert judge_coherence(grader, "cat cat cat cat") == UNKNOWN
    assert len(fake.requests) == 5
    assert judge_coherence(grader, "cat cat cat cat") == UNKNOWN  # a rerun reads the same answers from the cache
    assert len(fake.requests) == 5


def test_coherence_judge_for_the_alpha_search(fake, grader):
    fake.handler = lambda request: "VERDICT: INCOHERENT" if "zzz" in request.user else "VERDICT: COHERENT"
    texts = [f"A calm story number {i}." if i % 3 else f"zzz {i} zzz" for i in range(9)]
    verdicts = coherence_judge(grader)(["Tell me a story?"] * 9, texts)
    assert verdicts == [INCOHERENT if i % 3 == 0 else COHERENT for i in range(9)]


TOKENS = [" bake", " oven", " flour", " sugar", " icing"] + [f" word{i}" for i in range(15)]
ALWAYS = {" bake", " oven", " flour"}  # relevant in every rotation
DESCRIPTION = "The model was finetuned on documents claiming that cakes bake best at 450 degrees."
FREQUENT = ["cake", "baking", "oven"]


def listed_tokens(text: str) -> list[str]:
    return [json.loads(t) for t in re.findall(r'^\s*\d+\. (".*")$', text, re.MULTILINE)]


def relevance_answer(relevant_in_rotation):
    """A fake grader answering per token, knowing which rotation it sees from the token the list starts with."""

    def answer(request):
        tokens = listed_tokens(request.user)
        rotation = {0: 0, 6: 1, 13: 2}[TOKENS.index(tokens[0])]
        return "\n".join(
            f"{i}: {RELEVANT if relevant_in_rotation(t, rotation) else IRRELEVANT}" for i, t in enumerate(tokens, 1)
        )

    return answer


def test_relevance_needs_all_three_rotations(fake, grader):
    # " sugar" is relevant in rotations 0 and 1 only, " icing" in rotation 2 only
    fake.handler = relevance_answer(lambda t, k: t in ALWAYS or (t == " sugar" and k < 2) or (t == " icing" and k == 2))
    verdicts = judge_relevance(grader, DESCRIPTION, FREQUENT, TOKENS)
    assert verdicts == [RELEVANT if t in ALWAYS else IRRELEVANT for t in TOKENS]
    shown = sorted((listed_tokens(r.user) for r in fake.requests), key=lambda ts: TOKENS.index(ts[0]))
    assert shown == [TOKENS[k:] + TOKENS[:k] for k in (0, 6, 13)]
    assert all(DESCRIPTION in r.user and "cake, baking, oven" in r.user for r in fake.requests)


def test_relevance_unknown_when_a_rotation_never_answers_well(fake, grader):
    answer = relevance_answer(lambda t, k: t in ALWAYS)
    fake.handler = lambda request: "no idea" if listed_tokens(request.user)[0] == TOKENS[13] else answer(request)
    verdicts = judge_relevance(grader, DESCRIPTION, FREQUENT, TOKENS, attempts=2)
    assert verdicts == [UNKNOWN if t in ALWAYS else IRRELEVANT for t in TOKENS]  # no silent verdict either way
    assert len(fake.requests) == 2 + 2


DOMAIN = [" cake", " bake", " oven", " flour", " sugar", " frosting"]
SCALES = PATCHSCOPE_SCALES[:25]
ON_TOPIC = {0.9: 4, 1.3: 6, 40.0: 5}  # domain tokens per scale (one per group of 8-9); the others have one


def listed_sets(text: str) -> list[list[str]]:
    return [listed_tokens(block) for block in re.split(r"^Set \d+:$", text, flags=re.MULTILINE)[1:]]


def scale_tokens(scale):
    return [f" mark{scale}", " the", *DOMAIN[: ON_TOPIC.get(scale, 1)], " and"]


def tournament_answer(request):
    """A fake grader preferring the set with the most baking tokens, naming those as coherent."""
    sets = listed_sets(request.user)
    best = max(range(len(sets)), key=lambda k: sum(t in DOMAIN for t in sets[k]))
    coherent = [str(i) for i, t in enumerate(sets[best], 1) if t in DOMAIN]
    return f"Set {best + 1} is all baking.\nBEST: {best + 1}\nCOHERENT: {', '.join(coherent) or 'NONE'}"


def test_scale_tournament_over_25_scales(fake, grader):
    fake.handler = tournament_answer
    assert scale_tournament(grader, {s: scale_tokens(s) for s in SCALES}) == (1.3, DOMAIN)
    rounds = [[tokens[0] for tokens in listed_sets(r.user)] for r in fake.requests]  # each set's marker
    first, final = rounds[:-1], rounds[-1]
    assert len(first) == 3 and all(len(g) <= 10 for g in first)
    assert sorted(m for g in first for m in g) == sorted(f" mark{s}" for s in SCALES)  # every scale plays once
    assert sorted(final) == sorted(f" mark{s}" for s in ON_TOPIC)  # the group winners meet in the final


def test_scale_tournament_without_answers_picks_nothing(fake, grader):
    fake.handler = lambda request: "They all look fine."
    assert scale_tournament(grader, {s: scale_tokens(s) for s in SCALES}, attempts=2) == (None, [])
    assert len(fake.requests) == 3 * 2


def test_adl_cache_moves_the_grader_cache(fake, tmp_path, monkeypatch):
    """One cache root: $ADL_CACHE holds the graders' replies beside models and samples, not $XDG_CACHE_HOME."""
    monkeypatch.setenv("ADL_CACHE", str(tmp_path / "adl"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    fake.push("cached reply")
    grader = Grader(GraderSettings(fake.url, "fake-model", KEY), backoff=0.01)
    assert grader.chat(HELLO).content == "cached reply"
    files = list((tmp_path / "adl" / "graders").rglob("*.json"))
    assert len(files) == 1 and not (tmp_path / "xdg").exists()
    again = Grader(GraderSettings(fake.url, "fake-model", KEY), backoff=0.01).chat(HELLO)
    assert again.cached and again.content == "cached reply" and len(fake.requests) == 1
