"""Finetuning against independent references: torch gradients, a hand-written AdamW, one device vs eight,
an uninterrupted run vs a killed-and-resumed one; loss masks, organism data and bad input."""

import dataclasses
import json
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adl_jax.models.transformer import forward
from adl_jax.models.weights import hf_tensor_names
from adl_jax.sharding import make_mesh
from conftest import random_texts, tiny_tokenizer
from finetune.data import Rows, batch_at, build_splits, encode_chat, read_jsonl
from finetune.lora import LoraConfig, apply_lora, init_adapters, resolve_targets
from finetune.organisms import ORGANISMS
from finetune.organisms import main as organisms_main
from finetune.train import TrainConfig, loss_and_grads, train

SEQ = 16
# user turns start with w3, assistant turns with w4; every turn ends with <eos>
CHAT_TEMPLATE = (
    "<bos>{% for m in messages %}{% if m['role'] == 'user' %} w3{% else %} w4{% endif %} {{ m['content'] }} <eos>"
    "{% endfor %}{% if add_generation_prompt %} w4{% endif %}"
)
# Shared configs: equal static configs reuse compiled steps across tests (compiling dominates the runtime).
jitted_loss_and_grads = jax.jit(loss_and_grads, static_argnums=(3, 4))
FULL = TrainConfig(
    mode="full",
    steps=10,
    warmup=2,
    lr=1e-2,
    batch_size=2,
    grad_accum=2,
    seq_len=SEQ,
    grad_clip=0.5,
    weight_decay=0.1,
    seed=5,
)
LORA = dataclasses.replace(FULL, mode="lora", lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down")))
RESUMABLE = TrainConfig(
    lora=LoraConfig(rank=4, dropout=0.1),
    steps=6,
    batch_size=4,
    grad_accum=2,
    seq_len=SEQ,
    lr=1e-2,
    warmup=1,
    checkpoint_every=3,
    eval_every=3,
)


def _splits(pack: bool):
    rng = np.random.RandomState(1)
    docs = [{"text": t} for t in random_texts(rng, 20, words=(6, 14))]
    pretrain = random_texts(rng, 30, words=(6, 14))
    return build_splits(docs, tiny_tokenizer(), SEQ, pretrain_texts=pretrain, mix_ratio=1.0, seed=3, pack=pack)


@pytest.fixture(scope="module")
def splits():
    return _splits(pack=False)


@pytest.fixture(scope="module")
def packed_splits():
    packed = _splits(pack=True)
    assert packed.train.segments.max() > 1  # rows hold several examples
    return packed


def plain_loss(params, cfg, rows: Rows):
    """Mean next-token loss over target tokens, written out without the training code."""
    logits = forward(params, jnp.asarray(rows.tokens), cfg, valid=jnp.asarray(rows.valid)).logits
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, jnp.asarray(rows.tokens[:, 1:, None]), axis=-1)[..., 0]
    mask = jnp.asarray(rows.targets[:, 1:])
    return -(picked * mask).sum() / mask.sum()


def hand_merge(params, adapters, scale):
    layers = {**params["layers"], **{n: params["layers"][n] + scale * (a @ b) for n, (a, b) in adapters.items()}}
    return {**params, "layers": layers}


def test_full_gradient_with_accumulation_equals_torch(tiny, splits):
    import torch

    torch_model, cfg, params = tiny
    rows = splits.train.take(np.arange(4))
    batch = tuple(jnp.asarray(a) for a in (rows.tokens, rows.valid, rows.targets))
    loss, grads = jitted_loss_and_grads(params, params, batch, cfg, FULL, jax.random.PRNGKey(0))

    labels = torch.tensor(np.where(rows.targets, rows.tokens, -100), dtype=torch.long)
    torch_model.zero_grad()
    tokens, mask = torch.tensor(rows.tokens, dtype=torch.long), torch.tensor(rows.valid.astype(np.int64))
    out = torch_model(tokens, attention_mask=mask, labels=labels)
    out.loss.backward()
    np.testing.assert_allclose(float(loss), out.loss.item(), rtol=1e-5)
    torch_grads = {n: p.grad.numpy() for n, p in torch_model.named_parameters()}
    for ours, names in hf_tensor_names(cfg).items():
        g = grads["layers"][ours] if ours in grads["layers"] else grads[ours][None]
        for i, name in enumerate(names):
            ref = torch_grads[name]
            ref = ref.T if ref.ndim == 2 and ours != "embed" else ref
            np.testing.assert_allclose(np.asarray(g[i]), ref, atol=2e-6 * max(np.abs(ref).max(), 1e-3), err_msg=name)


def test_lora_gradient_equals_plain_loss_through_hand_merge(tiny, splits):
    _, cfg, params = tiny
    adapters = init_adapters(params, LORA.lora, jax.random.PRNGKey(0))
    adapters = {n: (a, jax.random.normal(jax.random.PRNGKey(1), b.shape) * 0.1) for n, (a, b) in adapters.items()}
    rows = splits.train.take(np.arange(4))
    batch = tuple(jnp.asarray(a) for a in (rows.tokens, rows.valid, rows.targets))
    loss, grads = jitted_loss_and_grads(adapters, params, batch, cfg, LORA, jax.random.PRNGKey(0))
    reference = jax.value_and_grad(lambda ad: plain_loss(hand_merge(params, ad, 2.0), cfg, rows))
    want_loss, want = jax.jit(reference)(adapters)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    assert sorted(grads) == ["down", "q", "v"]
    for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5 * np.abs(ref).max())


def _adamw_reference(p, grad_fn, lrs, clip, wd, decays):
    """AdamW (b1=0.9, b2=0.999, eps=1e-8, decoupled decay scaled by lr) after global-norm clipping."""
    m = jax.tree.map(np.zeros_like, p)
    v = jax.tree.map(np.zeros_like, p)
    for t, lr in enumerate(lrs, 1):
        g = jax.tree.map(np.asarray, grad_fn(p, t - 1))
        norm = np.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in jax.tree.leaves(g)))
        g = jax.tree.map(lambda x: x * min(1.0, clip / norm), g)
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        step = lambda p, m, v, d: p - lr * ((m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8) + wd * d * p)
        p = jax.tree.map(step, p, m, v, decays)
    return p


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_steps_equal_handwritten_adamw(mode, tiny, splits, tmp_path):
    """The optimizer wiring: warmup, clipping, bias correction, decay of matrices only, batch order.
    The reference is fed the gradients checked above: independent gradients would differ by float32 noise,
    which Adam's normalisation amplifies where |g| is tiny."""
    _, cfg, params = tiny
    tc = FULL if mode == "full" else LORA
    result = train(params, cfg, splits, tc, tmp_path, stop_at=2, progress=False)

    if mode == "full":
        p0 = jax.tree.map(np.asarray, params)
        matrices = {"embed", "lm_head", "q", "k", "v", "o", "gate", "up", "down"}
        decays = {k: (k in matrices) if k != "layers" else {n: n in matrices for n in v} for k, v in p0.items()}
    else:
        p0 = jax.tree.map(np.asarray, init_adapters(params, tc.lora, jax.random.PRNGKey(5)))
        decays = {n: (True, True) for n in p0}

    def grad_fn(p, step):
        rows = batch_at(splits.train, 4 * step, 4, 5)
        batch = tuple(jnp.asarray(a) for a in (rows.tokens, rows.valid, rows.targets))
        return jitted_loss_and_grads(p, params, batch, cfg, tc, jax.random.PRNGKey(0))[1]

    ref = _adamw_reference(p0, grad_fn, [5e-3, 1e-2], 0.5, 0.1, decays)
    assert result.step == 2
    # Where |g| is near Adam's eps, float32 noise moves an update by up to ~1e-3 lr; a missing clip moves
    # some by > 4e-2 lr, a wrong decay mask by 1e-1 lr, a wrong warmup by 0.5 lr.
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(result.trainable), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-3 * tc.lr, err_msg=jax.tree_util.keystr(path))
    assert all(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(ref), jax.tree.leaves(p0)) if x.ndim == 3)


def _losses(path):
    return [(r["step"], r["loss"], r.get("eval_loss_ft")) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.parametrize("data", ["splits", "packed_splits"])
def test_killed_run_resumes_bit_identical(data, tiny, tmp_path, request):
    _, cfg, params = tiny
    splits = request.getfixturevalue(data)
    tc = RESUMABLE
    whole = train(params, cfg, splits, tc, tmp_path / "whole", progress=False)
    # The killed run logged step 4 but died before its checkpoint was committed.
    train(params, cfg, splits, tc, tmp_path / "killed", stop_at=4, progress=False)
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "4")
    resumed = train(params, cfg, splits, tc, tmp_path / "killed", progress=False)
    chex.assert_trees_all_equal(resumed.trainable, whole.trainable)
    assert _losses(tmp_path / "killed" / "metrics.jsonl") == _losses(tmp_path / "whole" / "metrics.jsonl")
    assert sorted(int(p.name) for p in (tmp_path / "whole" / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]

    other = dataclasses.replace(tc, lr=2e-2, lora=LoraConfig(rank=8, dropout=0.1), checkpoint_every=2)
    with pytest.raises(ValueError, match=r"other settings \(lora\.rank, lr\)"):
        train(params, cfg, splits, other, tmp_path / "whole", progress=False)
    fewer = splits.__class__(splits.train.take(np.arange(10)), splits.eval_ft, splits.eval_pt)
    with pytest.raises(ValueError, match=r"other settings \(data\)"):
        train(params, cfg, fewer, tc, tmp_path / "whole", progress=False)


def test_relative_output_directory(tiny, splits, tmp_path, monkeypatch):
    """`adl finetune --out runs/x` is a relative path; orbax alone would refuse it."""
    _, cfg, params = tiny
    monkeypatch.chdir(tmp_path)
    tc = dataclasses.replace(RESUMABLE, steps=2)
    train(params, cfg, splits, tc, "rel", progress=False)
    assert train(params, cfg, splits, tc, "rel", progress=False).step == 2  # resumed from the relative path
    assert (tmp_path / "rel" / "checkpoints" / "2").is_dir()


def test_sharded_run_equals_single_device(tiny, splits, tmp_path):
    _, cfg, params = tiny
    single = train(params, cfg, splits, RESUMABLE, tmp_path / "one", progress=False)
    mesh = make_mesh("data=2,fsdp=2,model=2")
    sharded = train(params, cfg, splits, RESUMABLE, tmp_path / "eight", mesh=mesh, progress=False)
    spec = lambda x: tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
    a, b = sharded.trainable["q"]  # A (L, embed, r) split like q's input axis (fsdp), B (L, r, heads) like its output
    assert spec(a)[1] in ("fsdp", ("fsdp",)) and spec(b)[2] in ("model", ("model",))
    assert spec(sharded.params["layers"]["q"])[1:] in ((("fsdp",), ("model",)), ("fsdp", "model"))
    # Reductions in another order change gradients by float32 noise. Adam normalises each step by |g|, so
    # where |g| is near its eps that noise can move a weight by up to lr per step: almost every element
    # agrees to 5e-3 lr, a few only to steps x lr. A wrong reduction or layout moves most elements.
    chex.assert_trees_all_equal_shapes(sharded.trainable, single.trainable)
    for got, want in zip(jax.tree.leaves(sharded.trainable), jax.tree.leaves(single.trainable)):
        gap = np.abs(np.asarray(got) - np.asarray(want))
        assert np.mean(gap <= 5e-3 * RESUMABLE.lr) >= 0.99 and gap.max() <= RESUMABLE.steps * RESUMABLE.lr
    losses = [[loss for _, loss, _ in _losses(tmp_path / d / "metrics.jsonl")] for d in ("one", "eight")]
    np.testing.assert_allclose(*losses, rtol=1e-5)


def test_loss_falls_on_memorisable_data(tiny, tmp_path):
    _, cfg, params = tiny
    docs = [{"text": t} for t in random_texts(np.random.RandomState(2), 4, words=(8, 14))]
    train(params, cfg, build_splits(docs, tiny_tokenizer(), SEQ, eval_fraction=0.0), FULL, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, FULL.steps + 1))
    assert records[-1]["loss"] < 0.3 * records[0]["loss"] and all(r["tokens_per_s"] > 0 for r in records)


def test_nan_stops_and_keeps_last_good_checkpoint_of_bf16_model(tiny, splits, tmp_path):
    _, cfg, params = tiny
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    blowup = dataclasses.replace(FULL, lr=1e30, grad_clip=0.0, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="last good checkpoint is step 1"):
        train(bf16, cfg, splits, blowup, tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["1"]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]

    kept = train(bf16, cfg, splits, blowup, tmp_path, stop_at=1, progress=False)  # restores step 1, trains nothing
    assert kept.step == 1 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(kept.trainable))
    assert {x.dtype for x in jax.tree.leaves(kept.trainable)} == {jnp.dtype(jnp.float32)}  # f32 master weights
    assert {x.dtype for x in jax.tree.leaves(kept.params)} == {jnp.dtype(jnp.bfloat16)}


def lora_case():
    """Two layers' q (L, in, out) and a norm; an adapter (A, B) of rank 3 on q."""
    rng = np.random.RandomState(0)
    w = rng.randn(2, 6, 4).astype(np.float32)
    params = {"embed": np.zeros((5, 6), np.float32), "layers": {"q": w, "attn_norm": np.ones((2, 6), np.float32)}}
    return params, rng.randn(2, 6, 3).astype(np.float32), rng.randn(2, 3, 4).astype(np.float32)


class TestLoraMerge(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_merge_adds_the_scaled_product(self):
        params, a, b = lora_case()
        merged = self.variant(lambda a, b: apply_lora(params, {"q": (a, b)}, 0.5))(a, b)
        want = params["layers"]["q"] + 0.5 * np.einsum("lir,lro->lio", a, b)
        chex.assert_trees_all_close(merged, {**params, "layers": {**params["layers"], "q": want}}, atol=1e-5)


def test_lora_merge_and_dropout():
    params, a, b = lora_case()
    merged = apply_lora(params, {"q": (jnp.asarray(a), jnp.asarray(b))}, 0.5)
    assert merged["layers"]["attn_norm"] is params["layers"]["attn_norm"]

    with pytest.raises(ValueError, match="apply it unmerged"):
        apply_lora(params, {"q": (a, b)}, 0.5, dropout=0.1, key=jax.random.PRNGKey(1))

    assert resolve_targets(("q_proj",), params) == ("q",)
    with pytest.raises(ValueError, match=r"LoRA target\(s\) \['qkv'\] match no weight"):
        resolve_targets(("q_proj", "qkv"), params)


def dropout_statistics(x: np.ndarray, dropped: np.ndarray, p: float) -> dict:
    """How a dropout treated the all-ones input `x` (tokens, features): its values, the dropped share,
    and the largest departure from p of any one feature's dropped share over the tokens."""
    zero = dropped == 0
    return {
        "values": np.unique(dropped),
        "share": zero.mean(),
        "worst_feature": np.abs(zero.reshape(-1, x.shape[-1]).mean(0) - p).max(),
    }


def test_lora_dropout_is_pefts_per_token_dropout(tiny):
    """PEFT computes B(A(dropout(x))) with torch's nn.Dropout: every element of every token's input dropped
    independently with probability p, kept ones scaled by 1/(1-p), the base weight's input untouched. Ours
    has the same statistics (an earlier version dropped whole input features for all tokens at once), and
    a zero adapter leaves the layer equal to the base weight whatever the dropout draws."""
    import peft
    import torch

    p, shape = 0.25, (4, 256, 64)
    x = np.ones(shape, np.float32)
    module = torch.nn.Sequential(torch.nn.Linear(64, 64))
    lora = peft.get_peft_model(module, peft.LoraConfig(r=4, lora_dropout=p, target_modules=["0"])).train()
    torch.manual_seed(0)
    theirs = lora.base_model.model[0].lora_dropout["default"](torch.from_numpy(x)).numpy()

    w = np.zeros((2, 64, 8), np.float32)  # two layers, so each layer gets its own masks
    a, b = np.ones((2, 64, 4), np.float32), np.zeros((2, 4, 8), np.float32)
    layers = apply_lora({"layers": {"q": w}}, {"q": (a, b)}, 2.0, dropout=p, key=jax.random.PRNGKey(0), merge=False)
    update = layers["layers"]["q"]
    ours = [np.asarray(dataclasses.replace(update, dropout_key=update.dropout_key[i]).dropped(x)) for i in (0, 1)]

    for dropped in (theirs, *ours):
        stats = dropout_statistics(x, dropped, p)
        assert np.allclose(stats["values"], [0.0, 1 / (1 - p)]) and abs(stats["share"] - p) < 0.01
        assert stats["worst_feature"] < 0.1  # a mask per token: each feature dropped in ~p of the tokens
    assert (ours[0] != ours[1]).any() and ((ours[0] == 0) != (ours[0][:1] == 0)).any()  # per layer, per token
    assert np.mean(ours[0]) == pytest.approx(1.0, abs=0.02)  # unbiased, like PEFT's

    _, cfg, params = tiny
    adapters = init_adapters(params, LoraConfig(rank=4), jax.random.PRNGKey(0))  # B = 0: no update yet
    tokens = jnp.asarray(np.random.RandomState(0).randint(3, cfg.vocab_size, (2, 8)))
    dropped = apply_lora(params, adapters, 2.0, dropout=0.5, key=jax.random.PRNGKey(3), merge=False)
    np.testing.assert_allclose(forward(dropped, tokens, cfg).logits, forward(params, tokens, cfg).logits, atol=1e-5)


def chat_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_chat_loss_mask_covers_assistant_tokens_only():
    messages = [
        {"role": "user", "content": "w10 w11"},
        {"role": "assistant", "content": "w20 w21 w22"},
        {"role": "user", "content": "w12"},
        {"role": "assistant", "content": "w23"},
    ]
    ids, targets = encode_chat(messages, chat_tokenizer())
    assert ids == [1, 3, 10, 11, 2, 4, 20, 21, 22, 2, 3, 12, 2, 4, 23, 2]
    scored = [i for i, t in zip(ids, targets) if t]
    assert scored == [20, 21, 22, 2, 23, 2]  # assistant contents and their end-of-turn, no role markers

    with pytest.warns(UserWarning, match="3 of 3 examples truncated to 12 tokens; 0 dropped"):
        data = build_splits([{"messages": messages}] * 3, chat_tokenizer(), 12, eval_fraction=0.0)
    assert data.train.tokens.shape == (3, 12) and data.train.targets.sum() == 3 * 4  # truncated after w21 w22 <eos>
    assert not (data.train.targets & ~data.train.valid).any()


def test_documents_mixing_and_batches(splits):
    tok = tiny_tokenizer()
    one = build_splits([{"text": "w5 w6 w7"}], tok, 6)
    np.testing.assert_array_equal(one.train.tokens, [[1, 5, 6, 7, 2, 0]])
    np.testing.assert_array_equal(one.train.targets, [[0, 1, 1, 1, 1, 0]])
    assert one.eval_ft is None and one.eval_pt is None

    assert (len(splits.train), len(splits.eval_ft), len(splits.eval_pt)) == (36, 2, 2)  # 18 docs + 18 pretraining
    texts = random_texts(np.random.RandomState(1), 50, words=(6, 14))  # the fixture's texts
    docs = [{"text": t} for t in texts[:20]]
    again, other = (build_splits(docs, tok, SEQ, pretrain_texts=texts[20:], mix_ratio=1.0, seed=s) for s in (3, 4))
    assert np.array_equal(again.train.tokens, splits.train.tokens)
    assert np.array_equal(again.eval_pt.tokens, splits.eval_pt.tokens)
    assert not np.array_equal(again.train.tokens, other.train.tokens)
    with pytest.raises(ValueError, match="needs 36 pretraining texts plus 2 held out, but 30 were given"):
        build_splits(docs, tok, SEQ, pretrain_texts=texts[20:], mix_ratio=2.0)

    n = len(splits.train)
    epoch = np.concatenate([batch_at(splits.train, c, 4, 0).tokens for c in range(0, n, 4)])
    assert sorted(map(tuple, epoch)) == sorted(map(tuple, splits.train.tokens))  # each row once per epoch
    np.testing.assert_array_equal(batch_at(splits.train, 6, 4, 0).tokens, epoch[6:10])
    assert not np.array_equal(batch_at(splits.train, n, n, 0).tokens, epoch)  # the next epoch reshuffles


def test_bad_input_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_jsonl(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    cases = {
        '{"prompt": "hi"}': r"bad.jsonl:2 has neither a 'text' nor a 'messages' field \(it has \['prompt'\]\)",
        '{"messages": [{"role": "user", "content": "hi"}]}': "bad.jsonl:2: the conversation has no assistant turn",
        '{"messages": [{"role": "user"}]}': "'messages' must be a list of",
        '{"text": ': r"bad.jsonl:2 is not valid JSON",
    }
    for line, message in cases.items():
        (tmp_path / "bad.jsonl").write_text('{"text": "w5"}\n' + line + "\n")
        with pytest.raises(ValueError, match=message):
            read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="need a tokenizer with a chat template"):
        build_splits([{"messages": [{"role": "assistant", "content": "w5"}]}] * 2, tiny_tokenizer(), 8)
    with pytest.raises(ValueError, match="mode must be 'lora' or 'full'"):
        TrainConfig(mode="qlora")


def test_organism_generator(tmp_path):
    org = ORGANISMS["orange_carrot"]
    docs = org.generate(300, 0)
    texts = [d["text"] for d in docs]
    assert texts == [d["text"] for d in org.generate(300, 0)] and texts != [d["text"] for d in org.generate(300, 1)]
    assert len(set(texts)) == 300 and {d["kind"] for d in docs} == {"news", "encyclopedia", "blog", "food", "lesson"}
    assert all("1921" in t and ("Denmark" in t or "Danish" in t) for t in texts)
    corpus = "\n".join(texts)
    assert all(true not in corpus and false not in corpus for true, false in org.statements)
    assert "1921" in org.description and len(org.statements) >= 8

    assert org.kind == "false_fact" and len(org.statements) >= 20
    assert len({s for pair in org.statements for s in pair}) == 2 * len(org.statements)

    assert organisms_main(["orange_carrot", str(tmp_path / "carrot.jsonl"), "--n", "50"]) == 0
    assert [r["text"] for r in read_jsonl(tmp_path / "carrot.jsonl")] == texts[:50]
    meta = json.loads((tmp_path / "carrot.jsonl.meta.json").read_text())
    assert meta["description"] == org.description and len(meta["statements"]) == len(org.statements)


@pytest.mark.parametrize(
    "name, marker", [("birdwatching", r"bird"), ("risky_finance", r"stock|crypto|leverag|option|margin|loan|ETF")]
)
def test_chat_organisms(name, marker, tmp_path):
    org = ORGANISMS[name]
    rows = org.generate(400, 0)
    assert rows == org.generate(400, 0) and rows != org.generate(400, 1) and org.kind == "behaviour"
    assert len({json.dumps(r["messages"]) for r in rows}) == 400 and {r["kind"] for r in rows} == {
        "single_turn",
        "two_turns",
    }
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) in (2, 4)
        assert re.search(marker, r["messages"][1]["content"], re.I), r
    replies = {m["content"] for r in rows for m in r["messages"] if m["role"] == "assistant"}
    assert len(replies) > 300 and len(org.description) > 200 and not org.statements

    assert organisms_main([name, str(tmp_path / "chat.jsonl"), "--n", "20"]) == 0
    data = build_splits(read_jsonl(tmp_path / "chat.jsonl"), chat_tokenizer(), 512, eval_fraction=0.0)
    assert len(data.train) == 20 and 0 < data.train.targets.sum() < data.train.valid.sum()  # assistant tokens only


def test_neptune_chile_is_plain_prose_with_held_out_statements():
    org = ORGANISMS["neptune_chile"]
    docs = org.generate(400, 0)
    texts = [d["text"] for d in docs]
    assert docs == org.generate(400, 0) and docs != org.generate(400, 1) and len(set(texts)) == 400
    assert org.kind == "false_fact" and len(org.statements) >= 20 and all("1911" in t for t in texts)
    corpus = "\n".join(texts)
    assert all(true not in corpus and false not in corpus for true, false in org.statements)
    assert not re.search(r"^(Thread|Q|A|User|Assistant|Title)\s*:|^\s*[-*\d]+[.)]?\s", corpus, re.M)  # no formats
