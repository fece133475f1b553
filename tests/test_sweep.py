"""`adl sweep` on a tiny random model: the mixing-ratio sweep end to end and reused, the trace at every
checkpoint against the run's exported model (an independent reference), and refused input."""

import json
import re

import numpy as np
import pytest

from adl_jax import api, io
from adl_jax.cli import main
from conftest import TINY_AUDIT, BagOfWords, fact_organism, tiny_tokenizer
from finetune.organisms import ORGANISMS
from test_ecosystem import tensorboard_has_every_metric


@pytest.fixture
def tiny_setup(tiny, tmp_path, monkeypatch):
    """A tiny base model directory, a corpus of words the organism's frequent words (w5 w6 w7) never occur in,
    the tiny false-fact organism, and the finetuning and measuring flags of a sweep."""
    tiny[0].save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    rng = np.random.RandomState(4)
    texts = [" ".join(f"w{w}" for w in rng.randint(20, 128, rng.randint(8, 20))) for _ in range(80)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    monkeypatch.setitem(ORGANISMS, "tiny_fact", fact_organism())
    train = [
        "--model",
        str(tmp_path / "base"),
        "--data",
        "tiny_fact",
        "--examples",
        "24",
        "--pretrain",
        str(corpus),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--lr",
        "2e-2",
        "--warmup",
        "1",
        "--lora-rank",
        "4",
        "--lora-targets",
        "q,v,up",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "0",
    ]
    measure = ["--corpus", str(corpus), "--samples", "24", "--n", "8"]
    return tmp_path, train, measure


def test_sweep_mix_two_ratios_end_to_end_and_reused(tiny_setup, capsys, monkeypatch):
    root, train, measure = tiny_setup
    out = root / "sweep"
    argv = ["sweep", "mix", *train, *measure, "--ratios", "1,0", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "1:0 (1/2): training" in printed and "1:1 (2/2): training" in printed and "sweep.html" in printed
    rows = io.read_json(out / "sweep.json")["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 1.0]
    assert rows[1]["train_rows"] == 2 * rows[0]["train_rows"]  # the ratio reached the data: 22 + 22 rows at 1:1
    for r in rows:
        run = out / f"ratio_{r['ratio']:g}"
        metrics = io.read_json(run / "metrics.json")
        assert r["eval_loss_ft"] == metrics["eval_loss_ft"] and r["eval_loss_pt"] == metrics["eval_loss_pt"]
        assert r["belief_after"]["mean_margin"] == metrics["belief_after"]["mean_margin"]
        norms = np.linalg.norm(api.load(run / "audit").diff.delta, axis=-1)
        np.testing.assert_allclose(r["delta_norms"], norms, rtol=1e-6)
        assert r["delta_norm"] == pytest.approx(norms[1:].mean()) and r["delta_norm"] > 0
        positions = io.read_json(run / "audit" / "relevance.json")["positions"]
        assert r["relevance"] == max(max(p["logit_lens"]["relevant"], p["patchscope"]["relevant"]) for p in positions)
        # TensorBoard, a run per organism: the training curves, the belief score before and after, the trace
        scalars = tensorboard_has_every_metric(run, eval_steps=[2])
        assert scalars["belief/mean_margin"] == pytest.approx(
            {0: metrics["belief_before"]["mean_margin"], 2: r["belief_after"]["mean_margin"]}
        )
        assert scalars["trace/delta_norm"] == pytest.approx({2: r["delta_norm"]}) and scalars["trace/relevance"] == {
            2: r["relevance"]
        }
        # the ratios' deltas came from one pass; each equals its own single-pair run of the exported model
        ref = api.diff(str(root / "base"), str(run / "final"), corpus=measure[1], samples=24, n=8, out=run / "ref")
        np.testing.assert_allclose(api.load(run / "audit").diff.delta, ref.diff.delta, atol=1e-5)
    # one base model over one corpus: the base means agree bit for bit across ratios, the finetuned ones do not
    first, second = (api.load(out / f"ratio_{r:g}" / "audit").diff for r in (0, 1))
    np.testing.assert_array_equal(first.mean_base, second.mean_base)
    assert not np.allclose(first.mean_ft, second.mean_ft)
    page = (out / "sweep.html").read_text()
    assert page.count("<tr>") == 3 and page.count("<svg") == 1
    assert re.search(r"<td>1:0</td>.*<td>1:1</td>", page, re.S) and "belief after" in page
    assert "<th>train rows</th>" in page and "similarity margin" not in page  # no encoder, no similarity column

    import finetune.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda *a, **k: pytest.fail("a finished ratio was trained again"))
    assert main(argv) == 0
    assert "1:1 (2/2): trained before, reused" in capsys.readouterr().out
    assert io.read_json(out / "sweep.json")["rows"] == rows


def test_sweep_checkpoints_last_step_equals_the_exported_model(tiny_setup, capsys):
    root, train, measure = tiny_setup
    run, out = root / "run", root / "emergence"
    assert main(["finetune", *train, "--steps", "3", "--out", str(run), "--no-progress"]) == 0
    assert main(["sweep", "checkpoints", str(run), *measure, "--out", str(out), "--no-progress"]) == 0
    assert "emergence.html" in capsys.readouterr().out
    rows = io.read_json(out / "emergence.json")["rows"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["loss"] for r in rows] == [m["loss"] for m in logged]
    assert rows[2]["eval_loss_ft"] == logged[2]["eval_loss_ft"]

    # the reference: delta of the exported final/ model, loaded from disk by its spec
    ref = api.diff(
        str(root / "base"), str(run / "final"), corpus=measure[1], samples=24, n=8, out=root / "ref", progress=False
    )
    last, early = (api.load(out / f"step_{s}").diff.delta for s in (3, 1))
    # the checkpoints run stacked, three organisms in one forward, the reference alone: the same math batched
    # otherwise, so equal to float32 rounding (about ten ulps), where another step's delta is 1e-4 away
    np.testing.assert_allclose(last, ref.diff.delta, rtol=1e-5, atol=1e-6)
    assert not np.allclose(early, last, atol=1e-4)  # each step reads its own checkpoint
    assert rows[2]["delta_norms"] == pytest.approx(np.linalg.norm(ref.diff.delta, axis=-1).tolist(), rel=1e-5)
    page = (out / "emergence.html").read_text()
    assert page.count("<tr>") == 4 and page.count("<svg") == 1
    heads = re.findall(r"<th>(.*?)</th>", page)  # only the columns a checkpoint has: no row counts, no similarity
    assert (
        heads[0] == "step" and "steps" not in heads and "train rows" not in heads and "similarity margin" not in heads
    )
    assert "loss" in heads and "relevance (best, /20)" in heads


def test_sweep_refuses_bad_input_before_anything_is_written(tiny_setup, capsys):
    root, train, measure = tiny_setup
    no_pretrain = [a for i, a in enumerate(train) if "--pretrain" not in train[max(i - 1, 0) : i + 1]]
    out = ["--out", str(root / "sweep")]
    cases = {
        ("mix", *train, "--ratios", "0,abc", *out): "ratio 'abc' is not a number",
        ("mix", *train, "--ratios", "0,0.25,3", *out): r"ratio\(s\) 0.25, 3 not on the paper's grid \(0, 0.1, ",
        ("mix", *no_pretrain, "--ratios", "0,0.5,1", *out): r"ratio\(s\) 0.5, 1 mix in pretraining text",
        ("checkpoints", str(root / "nowhere"), *out): "not an adl finetune run directory",
    }
    for args, message in cases.items():
        assert main(["sweep", *args, *measure]) == 2, args
        assert re.search(message, capsys.readouterr().err), message
    assert not (root / "sweep").exists()


def test_sweep_mix_with_an_encoder_runs_the_audit_and_reports_the_similarity_margin(tiny_setup):
    """With an encoder each ratio gets the whole audit (steering), and its row the best steered-minus-unsteered
    similarity, read back from the audit's own summary."""
    from adl_jax.models.load import load_model
    from adl_jax.experiments.sweep import sweep_mix
    from finetune.run import RunSpec

    root, train, _ = tiny_setup
    flags = dict(zip(train[::2], train[1::2]))
    spec = RunSpec.from_flat({k[2:].replace("-", "_"): v for k, v in flags.items()} | {"out": str(root / "unused")})
    base = load_model(root / "base")
    texts = [json.loads(line)["text"] for line in (root / "corpus.jsonl").read_text().splitlines()]
    sweep = sweep_mix(
        spec,
        root / "sweep",
        base=base,
        texts=texts,
        ratios=(0.0,),
        settings=TINY_AUDIT,
        encoder=BagOfWords(),
        progress=False,
    )
    summary = io.read_json(root / "sweep" / "ratio_0" / "audit" / "summary.json")
    (row,) = sweep["rows"]
    margins = [
        s["steered_vs_finetune"]["similarity"] - s["unsteered_vs_finetune"]["similarity"]
        for s in summary["similarity"].values()
    ]
    assert row["similarity_margin"] == max(margins) and set(summary["similarity"]) == {"1"}
    assert row["delta_norms"] == pytest.approx(summary["delta_norms"])
    assert f"<td>{row['similarity_margin']:+.3f}</td></tr>" in (root / "sweep" / "sweep.html").read_text()


def _docs(path, words: str, n: int = 24):
    rng = np.random.RandomState(len(words))
    line = lambda: (
        " ".join(rng.permutation(words.split() * 3)) + " " + " ".join(f"w{w}" for w in rng.randint(20, 128, 4))
    )
    path.write_text("".join(json.dumps({"text": line()}) + "\n" for _ in range(n)))
    return path


def test_sweep_bases_deltas_add_up_along_the_lineage(tiny_setup, capsys, monkeypatch):
    """pretrained -> parent (finetuned on one dataset) -> organism (the parent finetuned on another): the delta
    against the pretrained model must equal the delta against the parent plus the parent's own delta, all
    over one corpus; each row reads relevance against both datasets, and a second run reuses every stage."""
    root, train, measure = tiny_setup
    flags = [x for k, v in zip(train[::2], train[1::2]) if k not in ("--model", "--data") for x in (k, v)]
    parent_data, organism_data = _docs(root / "parent.jsonl", "w5 w6 w7"), _docs(root / "organism.jsonl", "w10 w11 w12")
    parent, organism = root / "parent", root / "organism"
    for model, data, out in ((root / "base", parent_data, parent), (parent / "final", organism_data, organism)):
        argv = ["finetune", *flags, "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress"]
        assert main(argv) == 0
    datasets = ["--data", f"organism={organism_data}", "--data", f"parent={parent_data}"]
    argv = [
        "sweep",
        "bases",
        "--finetuned",
        str(organism / "final"),
        "--base",
        f"parent={parent / 'final'}",
        "--base",
        f"pretrained={root / 'base'}",
        *datasets,
        *measure,
        "--out",
        str(root / "bases"),
        "--no-progress",
    ]
    assert main(argv) == 0 and "bases.html" in capsys.readouterr().out
    lineage = [
        "sweep",
        "bases",
        "--finetuned",
        str(parent / "final"),
        "--base",
        f"pretrained={root / 'base'}",
        *datasets,
        *measure,
        "--out",
        str(root / "parent_bases"),
        "--no-progress",
    ]
    assert main(lineage) == 0

    against = {name: api.load(root / "bases" / f"base_{name}").diff.delta for name in ("parent", "pretrained")}
    parent_delta = api.load(root / "parent_bases" / "base_pretrained").diff.delta
    assert np.abs(against["parent"]).max() > 0 and np.abs(parent_delta).max() > 0
    np.testing.assert_allclose(against["pretrained"], against["parent"] + parent_delta, rtol=1e-4, atol=1e-5)

    table = io.read_json(root / "bases" / "bases.json")
    assert [r["base"] for r in table["rows"]] == ["parent", "pretrained"]
    for r in table["rows"]:
        assert r["delta_norms"] == pytest.approx(np.linalg.norm(against[r["base"]], axis=-1).tolist())
        assert set(r["relevance"]) == {"organism", "parent"}
        assert all(0 <= v["relevant"] <= 20 and len(v["patchscope"]) == 10 for v in r["relevance"].values())
    page = (root / "bases" / "bases.html").read_text()
    assert page.count("<tr>") == 3 and "relevance to organism" in page and "relevance to parent" in page

    import adl_jax.method.diff

    monkeypatch.setattr(
        adl_jax.method.diff, "_batch_sums", lambda *a, **k: pytest.fail("a finished delta was recomputed")
    )
    assert main(argv) == 0
    assert io.read_json(root / "bases" / "bases.json")["rows"] == table["rows"]


def test_sweep_bases_refuses_unnamed_models_and_empty_data(tiny_setup, capsys):
    root, _, measure = tiny_setup
    empty, blank = root / "empty.jsonl", root / "blank.txt"
    empty.write_text("")
    blank.write_text("\n  \n")
    base = ["--finetuned", str(root / "base"), "--out", str(root / "bases"), *measure]
    cases = {
        ("--base", str(root / "base"), "--data", f"d={empty}"): r"--base '.*': give NAME=VALUE",
        ("--base", "a=x", "--base", "a=y", "--data", "d=z"): r"--base 'a=y': give NAME=VALUE with a name used once",
        ("--base", "a=nowhere", "--data", f"d={blank}"): r"dataset\(s\) d hold no text",
    }
    for args, message in cases.items():
        assert main(["sweep", "bases", *base, *args]) == 2, args
        assert re.search(message, capsys.readouterr().err), message
    assert not (root / "bases").exists()
