"""`audit` end to end on a tiny pair: every stage's file, resumable stages, and a report that renders."""

import dataclasses
import html
import shutil

import numpy as np
import pytest

from adl_jax import api, io
from adl_jax.experiments.audit import audit
from conftest import TINY_AUDIT
from conftest import random_texts, tiny_pair


def test_audit_writes_every_stage(audited):
    run, summary = audited.run, audited.summary
    for name in (
        "delta.safetensors",
        "lens.json",
        "steering_references.json",
        "generations_unsteered.json",
        "steering_pos1.json",
        "relevance.json",
        "similarity.json",
        "semantic_relevance.json",
        "summary.json",
        "report.html",
    ):
        assert (run / name).exists(), name
    sim = summary["similarity"]["1"]
    assert sim["finetune_self"]["similarity"] > 0.99  # identical finetuning texts
    assert sim["steered_vs_finetune"]["n"] == len(TINY_AUDIT.final_prompts) * TINY_AUDIT.steering.final_samples
    assert summary["judges"] == "offline" and set(summary["alphas"]) == {"1"}
    rel = io.read_json(run / "relevance.json")
    assert set(rel["frequent_tokens"]) == {"w110", "w111", "w112"}
    assert len(rel["positions"]) == 5
    steer = io.read_json(run / "steering_pos1.json")
    assert len(steer["search"]["paths"]) == 3 and set(steer["steered"]) == set(TINY_AUDIT.final_prompts)
    page = (run / "report.html").read_text()
    assert page.count("<svg") >= 2 and "Position 4" in page and "steered" in page and "(chosen)" in page
    # the finding quotes the most relevant position's tokens, of the lens with more relevant ones
    best = rel["best"]
    lens = "logit_lens" if best["logit_lens"]["relevant"] > best["patchscope"]["relevant"] else "patchscope"
    p = api.load(run).lenses.positions[best["position"]]
    scores = p["logit_lens"]["delta"] if lens == "logit_lens" else p["patchscope"][str(p["patchscope_scale"])]
    quoted = ", ".join(t.strip() for t in scores.tokens[:10])
    assert f"tokens at position {best['position']}: {html.escape(quoted)}." in page
    # semantic relevance: every position, its null from 5 x 20 random directions and both means per position
    sem = summary["semantic_relevance"]
    assert [r["position"] for r in sem["positions"]] == list(range(5))
    assert (
        sem["controls"] == {"random": 100, "base_mean": 5, "ft_mean": 5} and sem["reference"] == "20 finetuning texts"
    )
    assert "Semantic relevance against a null" in page and "against 110 control vectors" in page


def test_finished_stages_are_reused(audited, monkeypatch):
    import adl_jax.experiments.audit as audit_mod

    monkeypatch.setattr(audit_mod, "find_alphas", lambda *a, **k: pytest.fail("steering stage was recomputed"))
    again = audit(
        audited.base,
        audited.ft,
        audited.run,
        texts=audited.texts,
        settings=audited.settings,
        finetune_texts=audited.ft_texts,
        progress=False,
    )
    assert again["alphas"] == audited.summary["alphas"]


def test_a_run_directory_refuses_other_settings(audited):
    with pytest.raises(ValueError, match="other settings \\(steer_model\\)"):
        audit(
            audited.base,
            audited.ft,
            audited.run,
            texts=audited.texts,
            settings=dataclasses.replace(audited.settings, steer_model="base"),
            progress=False,
        )


def test_report_renders_in_headless_chromium(audited, tmp_path):
    """The page as a person sees it: Chromium's screenshot shows the plots' coloured bars and lines and the
    highlighted token cells, not just text (an unrendered or broken SVG leaves none of those colours)."""
    from matplotlib.image import imread

    from adl_jax.report.audit import BROWSERS, screenshot

    if not any(map(shutil.which, BROWSERS)):
        pytest.skip("no Chromium installed (.ci/run installs it)")
    png = imread(screenshot(audited.run / "report.html", tmp_path / "report.png", height=3000))
    rgb = (png[..., :3] * 255).round().astype(int).reshape(-1, 3)
    assert png.shape[:2] == (3000, 1200)
    ink = (rgb.max(axis=1) < 200).mean()  # text, table borders, axes
    assert 0.005 < ink < 0.5, ink

    def share(color, tol=12):
        return (np.abs(rgb - np.array(color)).max(axis=1) <= tol).mean()

    assert share((31, 119, 180)) > 1e-4  # matplotlib C0: the relevance plot's logit-lens bars
    assert share((255, 127, 14)) > 1e-4  # C1: its patchscope bars / the alpha path
    assert share((0xEE, 0xEE, 0xFF), tol=3) > 1e-3  # token cells of the tables


def test_graded_audit_over_real_http(tmp_path, rng):
    """The alpha search and relevance grading through the LLM grader, against a local fake endpoint that
    first rate-limits and once answers malformed."""
    from fake_openai import FakeOpenAI, error

    from adl_jax.judging.graders import Grader, GraderSettings

    (base, ft), _ = tiny_pair(tmp_path)

    def answer(request):
        system = request.body["messages"][0]["content"]
        if "VERDICT" in system:
            return "VERDICT: COHERENT"
        if "BEST:" in system:  # the scale tournament: always the first set, its first token coherent
            return "BEST: 1\nCOHERENT: 1"
        n = request.user.count("\n") - request.user.split("Tokens to judge:")[0].count("\n")
        return "\n".join(f"{i}: RELEVANT" for i in range(1, n + 1))

    with FakeOpenAI(answer) as server:
        server.push(error(429, retry_after=0.1), "no verdict here")
        grader = Grader(GraderSettings(server.url, "fake-model"), cache_dir=tmp_path / "cache", backoff=0.01)
        summary = audit(
            base,
            ft,
            tmp_path / "run",
            texts=random_texts(rng, 100, vocab_size=100),
            settings=dataclasses.replace(TINY_AUDIT, layers="all"),
            description="words w110 to w112",
            finetune_texts=["w110 w111 w112 w110"] * 20,
            grader=grader,
            progress=False,
        )
        assert summary["judges"] == "LLM grader fake-model"
        # Everything coherent: the search climbs to the top of its interval on the first prompt.
        thresholds = io.read_json(tmp_path / "run" / "steering_pos1.json")["search"]["thresholds"]
        assert thresholds["Tell me a story?"] == pytest.approx(100 * (1 - 2**-3))
        assert thresholds["Why don't you choose a topic of conversation for us?"] == pytest.approx(175 * (1 - 2**-3))
        rel = io.read_json(tmp_path / "run" / "relevance.json")
        assert rel["positions"][0]["logit_lens"]["graded"] == 20
        assert grader.stats.retries >= 1 and grader.stats.calls > 10
        lens = io.read_json(tmp_path / "run" / "lens.json")["positions"][0]
        assert lens["patchscope_scale_rule"] == "LLM tournament" and lens["patchscope_scale"] == 0.5
        # the layer profile grades every layer's tokens too, and names the best layer by that grade
        profile = summary["layer_profile"]
        assert profile["measure"] == "graded" and set(profile["best_by_measure"]) == {"graded", "relevant"}
        for cell, row in zip(profile["layers"][1]["positions"], rel["positions"]):
            assert cell["logit_lens"]["graded"] == row["logit_lens"]["graded"]


def test_semantic_relevance_is_reused_only_for_its_own_inputs(audited):
    """Its reference (data or description), encoder and placebo runs bind the stage: a rerun that changes one
    is refused instead of reading the old null and p-values."""
    from adl_jax.experiments.audit import _semantic_relevance
    from conftest import BagOfWords

    res, none = api.load(audited.run), {"runs": [], "deltas": None}
    frequent = io.read_json(audited.run / "relevance.json")["frequent_tokens"]
    ours = _semantic_relevance(audited.run, audited.ft, res, BagOfWords(), audited.ft_texts, None, frequent, none)
    assert ours is not None
    with pytest.raises(ValueError, match="finetune_data"):
        _semantic_relevance(audited.run, audited.ft, res, BagOfWords(), None, "a description", (), none)


def test_layer_profile_reads_every_layer_as_the_audit_reads_its_own(audited):
    """The profile at the read layer repeats the audit's own lens tokens and relevance counts; every layer's
    norms come from the stored per-layer delta, its patchscope is patched at that layer, and the best layer
    follows the stated rule."""
    from adl_jax.experiments.layer_profile import PROFILE
    from adl_jax.judging.offline import dataset_overlap
    from adl_jax.judging.relevance import reference_embedding, token_scores
    from conftest import BagOfWords
    from adl_jax.method.lens import patchscope

    profile = io.read_json(audited.run / PROFILE)
    assert audited.summary["layer_profile"] == profile
    res = api.load(audited.run)
    rel, sem = io.read_json(audited.run / "relevance.json"), audited.summary["semantic_relevance"]
    assert [r["layer"] for r in profile["layers"]] == [0, 1, 2] and profile["read_layer"] == profile[
        "middle_layer"
    ] == 1
    for i, row in enumerate(profile["layers"]):
        norms = np.linalg.norm(res.diff.delta_layers[i], axis=-1)
        np.testing.assert_allclose(row["norm_ratio"], norms / res.diff.ft_norm_layers[i], rtol=1e-6)
        for p in row["positions"]:
            for lens in ("logit_lens", "patchscope"):
                assert p[lens]["relevant"] == dataset_overlap(p[lens]["tokens"], rel["frequent_tokens"])[0]
    read = profile["layers"][1]["positions"]
    for p, lens, r, s in zip(read, res.lenses.positions, rel["positions"], sem["positions"]):
        assert p["logit_lens"]["tokens"] == lens["logit_lens"]["delta"].tokens[:20]
        assert p["patchscope"]["tokens"] == lens["patchscope"][str(lens["patchscope_scale"])].tokens[:20]
        for name in ("logit_lens", "patchscope"):
            assert p[name]["relevant"] == r[name]["relevant"] and p[name]["tokens"] == [t for t, _ in s[name]["tokens"]]
    # semantic counts: each cell's tokens above its own threshold, from the profile's 200 draws per cell
    sig = profile["semantic_significance"]
    assert sig["draws"] == 200 and sig["correction"] == "max statistic over 3 layers x 5 positions x 2 lenses"
    reference = reference_embedding(BagOfWords(), audited.ft_texts)
    for row, sig_row in zip(profile["layers"], sig["layers"]):
        for p, cell in zip(row["positions"], sig_row["positions"]):
            for name in ("logit_lens", "patchscope"):
                scores = token_scores(BagOfWords(), p[name]["tokens"], reference, rel["frequent_tokens"])
                above = scores > cell[name]["threshold"]
                assert p[name]["semantic"] == cell[name]["relevant"] == np.sum(above)
                assert p[name]["semantic"] >= p[name]["relevant"]  # the data's own words count as relevant
    # layer 0: the patchscope patched at layer 0, at the chosen scale times layer 0's own norm
    scale = res.lenses.positions[2]["patchscope_scale"]
    (want,) = patchscope(
        audited.ft.params,
        audited.ft.cfg,
        audited.ft.tokenizer,
        res.diff.delta_layers[0, 2:3],
        0,
        res.diff.ft_norm_layers[0],
        scales=(scale,),
    )
    assert profile["layers"][0]["positions"][2]["patchscope"]["tokens"] == want[scale].tokens
    # the best layer: the most relevant tokens at any position and lens, ties to the read layer
    counts = {
        r["layer"]: max(p[n]["relevant"] for p in r["positions"] for n in ("logit_lens", "patchscope"))
        for r in profile["layers"]
    }
    top = max(counts.values())
    assert profile["measure"] == "relevant" and set(profile["best_by_measure"]) == {"relevant", "semantic"}
    assert profile["best"]["layer"] == min((x for x in counts if counts[x] == top), key=lambda x: abs(x - 1))
    assert profile["best"]["count"] == top and profile["best"]["read_layer_count"] == counts[1]
    page = (audited.run / "report.html").read_text()
    assert "Layer profile" in page and f"Layer {profile['best']['layer']}" in page and "adl audit --layer N" in page


def test_layer_profile_and_organisms_pages_in_headless_chromium(audited, tmp_path):
    """report.html's layer profile and the organisms.html of three organisms, as Chromium renders them: the
    sections are there, the profile's plot has one point per layer (in layer order), the best layer is named
    on both pages, and the browser logs no error."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    from adl_jax.experiments.organisms import PAGE, cross_organism
    from adl_jax.method.diff import DiffResult

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Chromium and chromedriver (apt-get install chromium chromium-driver)")
    out, names = tmp_path / "organisms", ["a", "b", "c"]
    for i, name in enumerate(names):  # three organisms: the audited one, then its delta turned and reversed
        shutil.copytree(audited.run, out / name)
        res = DiffResult.load(out / name)
        res.delta = res.delta * (1, -1)[i % 2] + i * np.roll(res.delta, 1, axis=-1)
        res.save(out / name)
    cross_organism(out, names)
    profile = audited.summary["layer_profile"]
    best = profile["best"]["layer"]

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options
    )
    try:
        driver.get((audited.run / "report.html").as_uri())
        assert driver.find_element(By.ID, "layer-profile").is_displayed()
        assert f"Layer {best}" in driver.find_element(By.ID, "layer-profile-finding").text
        plot = driver.find_element(By.CSS_SELECTOR, "#layer-profile-plot svg")
        assert plot.size["width"] > 300 and plot.size["height"] > 200
        for lens in ("logit_lens", "patchscope"):
            points = driver.find_elements(By.CSS_SELECTOR, f"#layer-profile-relevant-{lens} use")
            xs = [float(p.get_attribute("x")) for p in points]
            assert len(xs) == len(profile["layers"]) and xs == sorted(xs), lens
        driver.save_screenshot(str(tmp_path / "report.png"))
        driver.get((out / PAGE).as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "table tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows[1:]] == names
        assert all(r.find_elements(By.TAG_NAME, "td")[-1].text.startswith(f"{best} (") for r in rows[1:])
        assert driver.find_element(By.TAG_NAME, "svg").is_displayed()  # the cosine heat maps
        driver.save_screenshot(str(tmp_path / "organisms.png"))
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
