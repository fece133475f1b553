"""Exploring a finetune: audit flags, `adl steer`, per-token differences, and the dashboard in a real browser."""

import dataclasses
import json
import shutil
import threading

import numpy as np
import pytest

from adl_jax import io
from adl_jax.cli import audit_settings, build_parser, main
from adl_jax.experiments import steer as st
from adl_jax.method import adl
from adl_jax.method.tokens import differences, promoted_tokens
from adl_jax.models.generate import generate
from conftest import random_texts, tiny_pair, tiny_tokenizer


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    """A tiny pair saved as HF directories (tokenizers too, so a run names loadable models) and its delta run."""
    root = tmp_path_factory.mktemp("explore")
    (base, ft), torch_models = tiny_pair(root)
    for name in ("base", "ft"):
        tiny_tokenizer().save_pretrained(root / name)
    texts = random_texts(np.random.RandomState(0), 40)
    adl.diff(base, ft, texts=texts, samples=32, n=8, batch_size=16, out=root / "run", progress=False)
    return root, base, ft, torch_models


def test_audit_flags_reach_the_settings(tmp_path):
    (tmp_path / "final.txt").write_text("Tell me about carrots.\n\nWrite a poem.\n")
    (tmp_path / "search.jsonl").write_text('"Tell me a story?"\n{"prompt": "Any ideas?"}\n')
    argv = ["audit", "--base", "b", "--finetuned", "f", "--layer", "0.25", "--k", "4", "--n", "12", "--seed", "7"]
    argv += ["--steer-positions", "1,3", "--steer-model", "base", "--prompts", str(tmp_path / "final.txt")]
    argv += ["--search-prompts", str(tmp_path / "search.jsonl"), "--chat", "2", "--corpus", "chats.jsonl"]
    s = audit_settings(build_parser().parse_args(argv))
    assert (s.layer, s.k, s.n, s.seed, s.steer_positions, s.steer_model) == (0.25, 4, 12, 7, (1, 3), "base")
    assert s.final_prompts == ("Tell me about carrots.", "Write a poem.")
    assert s.search_prompts == ("Tell me a story?", "Any ideas?") and s.chat_before == 2
    quick = audit_settings(build_parser().parse_args(["audit", "--quick", "--layer", "3"]))
    assert quick.layer == 3 and quick.samples == 512  # a flag over the preset keeps the preset's other values
    assert s.layers is None and quick.layers is None
    for value, want in (("all", "all"), ("0,5,9", (0, 5, 9))):
        settings = audit_settings(build_parser().parse_args(["audit", "--layers", value]))
        assert settings.layers == want and settings.delta_settings().layers == want


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steer-model", "both"], "must be 'finetuned' or 'base'"),
        (["--chat-before", "1"], "needs a corpus of conversations"),
        (["--steer-positions", "7"], "steered positions must be analysed ones"),
        (["--prompts", "missing.txt"], "does not exist"),
    ],
)
def test_bad_audit_flags_are_refused_before_loading(argv, message, capsys):
    assert main(["audit", "--base", "b", "--finetuned", "f", *argv]) == 2
    assert message in capsys.readouterr().err


def _decode(model, gen):
    return [
        model.tokenizer.decode(t[:n], skip_special_tokens=True)
        for t, n in zip(gen.tokens.tolist(), gen.lengths.tolist())
    ]


def test_steer_alpha_zero_is_unsteered_and_batched_alphas_equal_separate_calls(explored):
    root, base, ft, _ = explored
    vector, layer, _ = st.run_vector(root / "run", 1)
    prompts = ["w5 w6", "w7 w8 w9 w10"]
    settings = st.SteerSettings(alphas=(0.5, 1.0, 2.0), new_tokens=6, temperature=0.0)
    batched = st.steer(ft, prompts, vector, settings, layer)
    # Alpha 0 (the unsteered row) equals generation without any intervention, token for token.
    rows = [ft.tokenizer(p)["input_ids"] for p in prompts for _ in range(4)]
    plain = _decode(ft, generate(ft.params, ft.cfg, rows, max_new_tokens=6))
    assert [r["unsteered"] for r in batched] == [plain[0:1], plain[4:5]]
    # Three alphas in one batch equal three separate calls (of two samples each: the same batch size, so one
    # compilation serves all); steering changes the text.
    for a in settings.alphas:
        alone = st.steer(ft, prompts, vector, dataclasses.replace(settings, alphas=(a,), samples=2), layer)
        assert [r["steered"][str(a)] for r in alone] == [r["steered"][str(a)] * 2 for r in batched]
    assert len({r["steered"]["2.0"][0] for r in batched} | {r["unsteered"][0] for r in batched}) > 2


def test_adl_steer_command(explored, tmp_path, capsys):
    """The command's table and JSON; a vector file steers as the run it came from; bad input is refused."""
    root, base, ft, _ = explored
    out = tmp_path / "steer.json"
    argv = ["steer", str(root / "run"), "--prompt", "w5 w6", "--alpha", "1.5", "--new-tokens", "6"]
    assert main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "prompt: w5 w6" in table and "unsteered" in table and "alpha 1.5" in table
    saved = json.loads(out.read_text())
    assert saved["layer"] == 1 and saved["alphas"] == [1.5] and saved["steer_model"] == "finetuned"
    settings = st.SteerSettings(alphas=(1.5,), new_tokens=6)
    assert saved["results"] == st.steer(ft, ["w5 w6"], st.run_vector(root / "run", 1)[0], settings, 1)
    np.save(tmp_path / "v.npy", st.run_vector(root / "run", 1)[0])
    flags = ["--finetuned", str(root / "ft"), "--base", str(root / "base"), "--layer", "1"]
    assert main(["steer", "--vector", str(tmp_path / "v.npy"), *flags, *argv[2:], "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"] == saved["results"]
    for bad, message in [
        (["--alpha", "150"], "alphas must lie in [0, 100]"),
        (["--alpha", "1,x"], "not a comma-separated list of numbers"),
        (["--prompt", " "], "a prompt must hold some text"),
        (["--position", "9"], "the run analysed positions 0..4"),
        (["--finetuned", str(root / "base"), "--base", str(root / "base")], "the run was computed from finetuned"),
    ]:
        assert main(["steer", str(root / "run"), "--prompt", "w5", *bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["steer", str(tmp_path / "nope"), "--prompt", "w5"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_token_differences_equal_pytorch(explored):
    import torch

    root, base, ft, (torch_base, torch_ft) = explored
    texts = random_texts(np.random.RandomState(1), 3, words=(5, 14))  # up to 15 tokens: the dashboard's width 16
    diffs = differences(base, ft, texts, batch_size=2)  # two batches, left padding in each
    counts, sums = {}, {}
    for text, d in zip(texts, diffs):
        ids = torch.tensor([base.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            lb = torch.log_softmax(torch_base(ids).logits[0].double(), -1)
            lf = torch.log_softmax(torch_ft(ids).logits[0].double(), -1)
        kl = (lf.exp() * (lf - lb)).sum(-1).numpy()
        rises, top = torch.topk(lf - lb, 10)
        assert d.ids == ids[0].tolist()
        np.testing.assert_allclose(d.kl, kl, atol=1e-5)
        np.testing.assert_array_equal(d.promoted_ids, top.numpy())
        np.testing.assert_allclose(d.rises, rises.numpy(), atol=1e-5)
        for i, r in zip(top.numpy().ravel(), rises.numpy().ravel()):
            counts[i], sums[i] = counts.get(i, 0) + 1, sums.get(i, 0.0) + r
    assert kl.max() > 1e-3  # the finetune does move the distributions
    summary = promoted_tokens(diffs, base.tokenizer, keep=10)
    positions = sum(len(d.ids) for d in diffs)
    expected = sorted(counts, key=lambda i: (-counts[i], -sums[i] / counts[i]))[:10]
    assert [t["id"] for t in summary["tokens"]] == expected
    for t in summary["tokens"]:
        assert t["count"] == counts[t["id"]] and np.isclose(t["share"], counts[t["id"]] / positions)
        assert abs(t["mean_rise"] - sums[t["id"]] / counts[t["id"]]) < 1e-5


def test_adl_tokens_command(explored, tmp_path, capsys):
    root, base, ft, _ = explored
    text, out = "w5 w6 w7 w100 w101 w9 w30", tmp_path / "tokens.json"
    assert main(["tokens", str(root / "run"), "--text", text, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    (expected,) = differences(base, ft, [text])
    saved = json.loads(out.read_text())
    assert saved["tokens"] == [expected.to_json(base.tokenizer)]
    assert saved["promoted"] == promoted_tokens([expected], base.tokenizer)
    assert f"'w101'  {expected.kl[5]:9.4f}" in printed and "8 positions" in printed
    (tmp_path / "texts.txt").write_text(text + "\n")
    assert (
        main(
            [
                "tokens",
                "--base",
                str(root / "base"),
                "--finetuned",
                str(root / "ft"),
                "--file",
                str(tmp_path / "texts.txt"),
            ]
        )
        == 0
    )
    assert "8 positions" in capsys.readouterr().out
    assert main(["tokens", str(root / "run"), "--text", text, "--file", str(tmp_path / "texts.txt")]) == 2
    assert "give --text TEXT or --file FILE" in capsys.readouterr().err


def test_audit_scores_promoted_tokens_like_lens_tokens(explored):
    from adl_jax.experiments.audit import promoted

    root, base, ft, _ = explored
    texts = random_texts(np.random.RandomState(2), 2, words=(10, 14))  # the shape of a batch above
    plain = promoted(base, ft, texts, None)
    assert "relevance" not in plain and plain["texts"] == 2
    top = [t["token"] for t in plain["tokens"]]
    frequent = [top[0].strip(), top[7].strip(), top[30].strip(), "w999"]  # two of them in the top 20
    scored = promoted(base, ft, texts, {"frequent_tokens": frequent})
    assert scored["relevance"] == {"relevant": 2, "share": 0.1} and scored["tokens"] == plain["tokens"]


def test_dashboard_refuses_a_remote_address(explored, capsys):
    root = explored[0]
    assert main(["dashboard", str(root / "run"), "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["demo", "--dashboard", "--host", "0.0.0.0"]) == 2  # refused before the demo starts
    assert "--allow-remote" in capsys.readouterr().err


def test_dashboard_in_a_browser(explored, tmp_path, capsys):
    """Headless Chromium: steer with a typed prompt and a moved slider (equal to `adl steer`), colour a typed
    text by KL (equal to `differences`), and show bad input as a message in the page."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from adl_jax.experiments.dashboard import Dashboard, make_server

    root, base, ft, _ = explored
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
    other = tmp_path / "other_run"  # a run of other weights: the same files, another fingerprint
    shutil.copytree(root / "run", other)
    meta = io.read_json(other / "meta.json")
    io.write_json(other / "meta.json", {**meta, "finetuned_sha256": "0" * 64})
    server = make_server(Dashboard(base, ft, [root / "run"]), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options
    )
    wait = WebDriverWait(driver, 30)
    by_id = lambda i: driver.find_element(By.ID, i)
    error = lambda: wait.until(lambda d: by_id("error").is_displayed() and by_id("error").text)
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert "logit lens of delta" in by_id("lens").text  # the run's tokens per position
        # Steer: a typed prompt, the slider moved from 1.0 to 1.5 with the keyboard.
        by_id("prompt").send_keys("w5 w6")
        by_id("new-tokens").clear()
        by_id("new-tokens").send_keys("6")
        by_id("alpha-slider").send_keys(*[Keys.ARROW_RIGHT] * 5)
        assert by_id("alpha").get_attribute("value") == "1.5"
        by_id("steer").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#steered .sample"))
        page_steered = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#steered .sample")]
        page_unsteered = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#unsteered .sample")]
        out = tmp_path / "steer.json"
        argv = ["steer", str(root / "run"), "--prompt", "w5 w6", "--alpha", "1.5", "--new-tokens", "6"]
        assert main([*argv, "--json", str(out)]) == 0
        (cli,) = json.loads(out.read_text())["results"]
        assert page_steered == [t.strip() for t in cli["steered"]["1.5"]]  # the page shows text as .text strips it
        assert page_unsteered == [t.strip() for t in cli["unsteered"]] and page_steered != page_unsteered
        # Per-token view: the tokens of a typed text, coloured by their KL.
        text = "w5 w6 w7 w100 w101 w9 w30"
        by_id("kl-input").send_keys(text)
        by_id("show-kl").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#kl-text .kl"))
        spans = driver.find_elements(By.CSS_SELECTOR, "#kl-text .kl")
        (expected,) = differences(base, ft, [text])
        assert [s.text.strip() for s in spans] == [t.strip() for t in expected.tokens]
        np.testing.assert_allclose([float(s.get_attribute("data-kl")) for s in spans], expected.kl, rtol=1e-6)
        assert len({s.value_of_css_property("background-color") for s in spans}) > 3
        assert "promoted next" in spans[1].get_attribute("title")
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # nothing failed to load or run
        # Bad input: a message in the page each time.
        by_id("prompt").clear()
        by_id("steer").click()
        assert "prompt is missing" in error()
        by_id("prompt").send_keys("w5")
        by_id("alpha").clear()
        by_id("alpha").send_keys("150")
        by_id("steer").click()
        assert "alphas must lie in [0, 100]" in error()
        for path, message in [(tmp_path / "nowhere", "no run directory"), (other, "the run was computed from")]:
            by_id("run-path").clear()
            by_id("run-path").send_keys(str(path))
            by_id("open-run").click()
            assert message in error()
        by_id("kl-input").clear()
        by_id("show-kl").click()
        assert "text is missing" in error()
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
