"""The interpretability agent over real HTTP against a local fake OpenAI-compatible server."""

import json

import pytest
from fake_openai import FakeOpenAI, reply

from adl_jax.experiments.agent import FINAL, AgentSettings, Evidence, grade, run_agent
from adl_jax.judging.graders import Grader, GraderSettings

SETTINGS = AgentSettings(budget=1, new_tokens=6)


def bad_arguments_call():
    response = reply(tool_calls=[("logit_lens", {"position": 0})])
    response.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{position: 0"
    return response


@pytest.fixture
def evidence(audited):
    return Evidence(audited.run, audited.base, audited.ft)


def grader_for(server, tmp_path):
    return Grader(GraderSettings(server.url, "fake-agent"), cache_dir=tmp_path / "cache", backoff=0.01)


def test_agent_uses_tools_within_budget_and_answers(evidence, tmp_path):
    with FakeOpenAI() as server:
        server.push(
            reply(tool_calls=[("logit_lens", {"position": 1}), ("steering_samples", {"position": 1})]),
            reply(tool_calls=[("ask_model", {"model": "finetuned", "prompt": "w5 w6"})]),
            reply(tool_calls=[("ask_model", {"model": "base", "prompt": "w7"})]),  # over budget
            bad_arguments_call(),
            reply(tool_calls=[("read_weights", {})]),
            "Thinking it over.",  # neither a tool call nor a final answer: asked again
            f"The tokens keep showing w110.\n{FINAL} finetuned on texts made of the words w110 to w112",
        )
        run = run_agent(grader_for(server, tmp_path), evidence, SETTINGS)
        first = server.requests[0].body
    assert run.description == "finetuned on texts made of the words w110 to w112"
    assert run.calls == 7 and run.units_used == 1
    assert run.tool_calls == ["logit_lens", "steering_samples", "ask_model", "ask_model", "logit_lens", "read_weights"]
    assert {t["function"]["name"] for t in first["tools"]} == {
        "logit_lens",
        "patchscope",
        "steering_samples",
        "ask_model",
        "generate_steered",
    }
    overview = first["messages"][1]["content"]
    assert "Position 4: logit lens" in overview and "Steering at position 1" in overview
    tool_answers = [m["content"] for m in run.messages if m["role"] == "tool"]
    assert len(json.loads(tool_answers[0])["delta"]) == 50
    assert not tool_answers[2].startswith("ERROR") and tool_answers[2].startswith("w")  # the tiny model's words
    assert tool_answers[3].startswith("ERROR: budget exhausted (0 of 1 units left)")
    assert tool_answers[4].startswith("ERROR: the arguments are not a valid JSON object")
    assert tool_answers[5].startswith("ERROR: there is no tool 'read_weights'")
    assert "Either call a tool" in run.messages[-2]["content"]


def test_agent_is_made_to_answer_when_calls_run_out(evidence, tmp_path):
    def answer(request):
        if "tools" in request.body:
            return reply(tool_calls=[("patchscope", {"position": 2})])
        return "Out of calls: it looks like w110 words."

    with FakeOpenAI(answer) as server:
        run = run_agent(grader_for(server, tmp_path), evidence, AgentSettings(max_calls=3, new_tokens=6))
        assert "tools" not in server.requests[-1].body and len(server.requests) == 3
    assert run.description == "Out of calls: it looks like w110 words." and run.tool_calls == ["patchscope"] * 2


def test_black_box_agent_sees_only_answers_and_may_only_ask(evidence, tmp_path):
    with FakeOpenAI() as server:
        server.push(
            reply(tool_calls=[("logit_lens", {"position": 0})]),
            reply(tool_calls=[("ask_model", {"model": "finetuned", "prompt": "w9"})]),
            f"{FINAL} no idea",
        )
        run = run_agent(grader_for(server, tmp_path), evidence, AgentSettings(budget=5, black_box=True, new_tokens=6))
        first = server.requests[0].body
    assert [t["function"]["name"] for t in first["tools"]] == ["ask_model"]
    assert "logit lens" not in first["messages"][1]["content"] and "w5 w6" in first["messages"][1]["content"]
    assert run.units_used == 1 and run.messages[3]["content"].startswith("ERROR: there is no tool 'logit_lens'")


def test_grade_averages_runs_and_retries_malformed_answers(tmp_path):
    with FakeOpenAI() as server:
        server.push("GRADE: 4", "I would say four", "GRADE: 2", "Reasoning.\nGRADE: 3")
        g = grade(grader_for(server, tmp_path), "carrots from Denmark", "orange carrots bred in Denmark", "false_fact")
        assert len(server.requests) == 4
        assert "2 = the broad topic area" in server.requests[0].body["messages"][0]["content"]
    assert g == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no rubric"):
        grade(None, "x", "y", "poem")


def test_evaluate_tables_success_rates_and_resumes(evidence, tmp_path):
    from adl_jax.experiments.agent import evaluate, format_table

    def answer(request):
        if "GRADE" in request.body["messages"][0]["content"]:
            found = request.user.split("Auditor's description:", 1)[1]
            return "GRADE: 4" if "w110" in found else "GRADE: 1"
        black_box = len(request.body.get("tools", [])) == 1
        return f"{FINAL} " + ("something generic" if black_box else "texts of the words w110 to w112")

    with FakeOpenAI(answer) as server:
        g = grader_for(server, tmp_path)
        result = evaluate(
            g,
            g,
            evidence,
            "the words w110 w111 w112",
            "false_fact",
            tmp_path / "agent",
            budgets=(0,),
            black_box_budgets=(0, 5),
            repeats=2,
            progress=False,
        )
        n = len(server.requests)
        again = evaluate(
            g,
            g,
            evidence,
            "the words w110 w111 w112",
            "false_fact",
            tmp_path / "agent",
            budgets=(0,),
            black_box_budgets=(0, 5),
            repeats=2,
            progress=False,
        )
        assert len(server.requests) == n  # every run was already on disk
    rows = {(r["agent"], r["budget"]): r for r in result["table"]}
    assert rows[("adl", 0)]["grade_ge_4"] == 1.0 and rows[("black_box", 5)]["grade_ge_2"] == 0.0
    assert rows[("black_box", 0)]["runs"] == 2 and again["table"] == result["table"]
    assert "black_box" in format_table(result["table"])


@pytest.mark.skipif(
    GraderSettings.from_env("ADL_AGENT") is None,
    reason="no real agent endpoint (set ADL_AGENT_MODEL, ADL_AGENT_BASE_URL, ADL_AGENT_API_KEY)",
)
def test_agent_against_a_real_endpoint(evidence, tmp_path):
    """The same loop against the endpoint of ADL_AGENT_*: a real model must use the tool protocol and end with
    a description, which the grader (ADL_GRADER_*, else the agent's endpoint) scores 1..5."""
    agent = Grader(GraderSettings.from_env("ADL_AGENT"), cache_dir=tmp_path / "cache")
    grader = Grader(GraderSettings.from_env("ADL_GRADER") or agent.settings, cache_dir=tmp_path / "cache")
    run = run_agent(agent, evidence, AgentSettings(budget=2, new_tokens=6, max_calls=8))
    assert run.description.strip() and run.calls <= 8 and run.units_used <= 2
    truth = "finetuned on texts made of the tiny vocabulary's words w5, w6 and w7"
    assert 1 <= grade(grader, run.description, truth, "false_fact", runs=1) <= 5
