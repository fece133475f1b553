"""GGUF loading against independent references.

* Gemma-3-270M (the packaged Q4_K_M file) through our loader vs transformers' own GGUF loader, on
  real English text longer than the 512-token sliding window.
* Tiny random HF models of every family, converted to GGUF the way llama.cpp's converter does
  (`write_gguf` in tiny_gguf.py: its tensor names, Q/K row permutation, 1 + w Gemma norms, metadata keys), must give
  the HF model's config and logits.
"""

from __future__ import annotations


import json
from pathlib import Path

import gguf
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from adl_jax.models.config import ModelConfig
from adl_jax.models.gguf import GGUFFile, load_gguf
from adl_jax.models.transformer import forward
from conftest import FAMILIES, tiny_hf_model
from tiny_gguf import tiny_overrides, write_gguf

ENGLISH = """\
The lighthouse stood at the end of a long spit of sand, and for most of the year the only people who visited \
it were the keeper and the men who brought his supplies. In the spring, though, the birds arrived by the \
thousands. They came in from the sea in great noisy clouds, settled on the rocks below the tower, and argued \
with one another from dawn until well after dark. The keeper kept a notebook in which he wrote down every \
species he could name, and by the end of his third season the notebook had grown so thick that he had to tie \
it shut with a piece of string.

Bread is one of the oldest prepared foods. Archaeologists have found traces of flatbreads made from wild grains \
that are more than fourteen thousand years old, long before people began to farm. The basic recipe has changed \
surprisingly little: flour, water, salt, and usually some kind of leavening. What has changed is the scale. A \
small bakery today might produce a few hundred loaves each morning, while an industrial plant can turn out tens \
of thousands of identical loaves every hour, sliced and wrapped before they have fully cooled.

When the committee finally met on Thursday afternoon, the first item on the agenda was the budget. The treasurer \
explained that the cost of repairing the roof had been higher than expected, largely because the contractor \
discovered rotten beams beneath the old tiles. Several members asked whether the work could be postponed until \
next year, but the chair pointed out that another winter of leaks would damage the library and the records \
stored in the basement. After a long discussion, the committee voted to approve the additional spending and to \
ask the town council for a small grant.

Learning a second language as an adult is difficult, but it is far from impossible. Most researchers agree that \
regular practice matters more than talent. Short daily sessions tend to work better than long weekly ones, \
because memory depends on repetition spread over time. It also helps to read and listen to material that is \
slightly above your current level, so that you understand most of it but still meet new words and structures. \
Speaking with native speakers, even when you make mistakes, builds confidence faster than any textbook.

The river changes character several times on its way to the sea. In the mountains it is narrow, cold and fast, \
cutting through rock and tumbling over small waterfalls. Lower down, in the farmland, it slows and widens, \
winding back and forth across a broad valley. By the time it reaches the coast it has become a wide, brown, \
slow-moving body of water, carrying silt that settles into marshes and mudflats where wading birds search for \
food at low tide.
"""


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "mistral"])  # llama.cpp writes Mistral as llama
def test_tiny_gguf_matches_hf(family, tmp_path, rng):
    model = tiny_hf_model(family, tmp_path / "hf", **tiny_overrides(family))
    write_gguf(model, tmp_path / "m.gguf")
    cfg, params = load_gguf(tmp_path / "m.gguf")
    assert cfg == ModelConfig.from_json(tmp_path / "hf")

    tokens = rng.randint(3, cfg.vocab_size, size=(2, 24))
    with torch.no_grad():
        want = model(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(forward(params, jnp.asarray(tokens), cfg).logits)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_llama_qk_rows_are_unpermuted(tmp_path):
    """The file's Q/K rows really are interleaved (so the logit match above depends on undoing it)."""
    model = tiny_hf_model("llama", tmp_path / "hf", **tiny_overrides("llama"))
    write_gguf(model, tmp_path / "m.gguf")
    q_file = next(t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors if t.name == "blk.0.attn_q.weight")
    q_hf = model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    assert not np.allclose(np.asarray(q_file.data), q_hf)
    _, params = load_gguf(tmp_path / "m.gguf")
    np.testing.assert_array_equal(np.asarray(params["layers"]["q"][0]), q_hf.T)


def test_sharded_load_equals_single_device(tmp_path):
    """Per-shard dequantization of only the needed (unpermuted) rows of Q8_0 matrices, with vocab, heads
    (down to half a KV head) and mlp split 4 ways and embed 2 ways, assembles the same tensors."""
    from adl_jax.sharding import make_mesh

    model = tiny_hf_model("llama", tmp_path / "hf", **tiny_overrides("llama"))
    write_gguf(model, tmp_path / "m.gguf", matrix_type=gguf.GGMLQuantizationType.Q8_0)
    _, single = load_gguf(tmp_path / "m.gguf")
    _, sharded = load_gguf(tmp_path / "m.gguf", mesh=make_mesh("data=1,fsdp=2,model=4"))
    assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(sharded))
    chex.assert_trees_all_equal(single, sharded)
    q_hf = model.model.layers[0].self_attn.q_proj.weight.detach().numpy().T
    q_ours = np.asarray(single["layers"]["q"][0])
    assert 0 < np.abs(q_ours - q_hf).max() < 0.01 * np.abs(q_hf).max()  # Q8_0: quantized, but the same matrix


def test_unknown_architecture_is_refused(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "mamba")
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"architecture 'mamba' is not supported; adl-jax reads llama, qwen2"):
        load_gguf(tmp_path / "m.gguf")


def test_undequantizable_tensor_type_is_refused(tmp_path, monkeypatch):
    """Q8_1 is a llama.cpp compute type that gguf-py cannot dequantize: the error names tensor, type and fix."""
    q8_1 = gguf.GGMLQuantizationType.Q8_1
    add_tensor = gguf.GGUFWriter.add_tensor

    def add_q8_1(self, name, tensor, **kw):
        if name == "blk.1.ffn_up.weight":
            block, size = gguf.GGML_QUANT_SIZES[q8_1]
            tensor, kw = np.zeros((tensor.shape[0], tensor.shape[1] // block * size), np.uint8), {"raw_dtype": q8_1}
        add_tensor(self, name, tensor, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "add_tensor", add_q8_1)
    write_gguf(tiny_hf_model("qwen3", tmp_path / "hf"), tmp_path / "m.gguf")
    with pytest.raises(ValueError, match=r"tensor blk\.1\.ffn_up\.weight is stored as Q8_1.*re-quantize"):
        load_gguf(tmp_path / "m.gguf")


# --- Gemma-3-270M, the packaged model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_gguf():
    """The embedded GGUF, assembled into the adl-jax cache ($ADL_CACHE or ~/.cache/adl-jax) on first use."""
    from adl_jax.models.load import embedded_gguf

    return embedded_gguf()


def test_gemma_norms_are_stored_as_one_plus_w(gemma_gguf):
    """Gemma's bf16 norm weights w are stored as float32 1 + w in every `*norm.weight` (q/k norms included):
    so v - 1 is always a bf16 value while v itself often is not. This is the offset the loader removes."""
    reader = gguf.GGUFReader(gemma_gguf)
    norms = [t for t in reader.tensors if t.name.endswith("norm.weight")]
    assert {t.name.split(".")[-2] for t in norms} == {
        "attn_norm",
        "ffn_norm",
        "post_attention_norm",
        "post_ffw_norm",
        "attn_q_norm",
        "attn_k_norm",
        "output_norm",
    }
    for t in norms:
        v = np.asarray(t.data, np.float32)
        shifted = torch.tensor(v - 1)
        assert torch.equal(shifted.bfloat16().float(), shifted), t.name
        assert not torch.equal(torch.tensor(v).bfloat16().float(), torch.tensor(v)), t.name


def _same_as_gguf_reader(path):
    """Our header parser against the `gguf` package's own reader: every metadata value and tensor equal."""
    reader, ours = gguf.GGUFReader(path), GGUFFile(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours.fields == theirs
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        mine = ours.tensors[t.name]
        assert (mine.tensor_type, mine.shape, mine.data.dtype) == (t.tensor_type, tuple(t.shape.tolist()), t.data.dtype)
        np.testing.assert_array_equal(mine.data, t.data)


def test_header_parser_matches_gguf_reader(tmp_path, gemma_gguf):
    write_gguf(
        tiny_hf_model("llama", tmp_path / "hf"),
        tmp_path / "m.gguf",
        chat_template="{{ x }}",
        matrix_type=gguf.GGMLQuantizationType.Q8_0,
    )
    _same_as_gguf_reader(tmp_path / "m.gguf")
    _same_as_gguf_reader(gemma_gguf)  # the 262k-token vocabulary, Q4_K/Q6_K/Q8_0 blocks, F32 norms


def test_truncated_gguf_is_refused(tmp_path):
    write_gguf(tiny_hf_model("qwen3", tmp_path / "hf"), tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:2000])
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        GGUFFile(tmp_path / "cut.gguf")


@pytest.fixture(scope="module")
def gemma_logits(gemma, gemma_gguf):
    """Next-token logits of the English text from transformers (torch, f32) and from us. `gemma` is
    conftest's session-wide load_model("gemma-3-270m"), i.e. `load_gguf` of the packaged file."""
    from transformers import AutoModelForCausalLM

    ids = gemma.tokenizer(ENGLISH)["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(gemma_gguf.parent, gguf_file=gemma_gguf.name, dtype=torch.float32)
    with torch.no_grad():
        theirs = ref.eval()(torch.tensor([ids])).logits[0].numpy()
    del ref
    cfg = gemma.cfg
    ours = np.asarray(jax.jit(lambda p, x: forward(p, x, cfg).logits)(gemma.params, jnp.asarray([ids]))[0])
    return theirs, ours


def test_gemma3_270m_matches_transformers(gemma_logits):
    theirs, ours = gemma_logits
    assert len(theirs) > 512  # past the sliding window, so local and global layers both matter
    kl = np.concatenate([_kl(theirs[i : i + 64], ours[i : i + 64]) for i in range(0, len(theirs), 64)])
    agree = float(np.mean(theirs.argmax(-1) == ours.argmax(-1)))
    print(
        f"\ngemma-3-270m GGUF, {len(theirs)} positions: top-1 agreement {agree:.4f}, mean KL {kl.mean():.2e}, "
        f"max KL {kl.max():.2e}, max |dlogit| {np.abs(theirs - ours).max():.2e}"
    )
    assert agree >= 0.99
    assert kl.mean() <= 1e-3


def test_gemma3_270m_tokenizer_matches_transformers(gemma, gemma_gguf):
    """Our torch-free GGUF tokenizer against transformers' own GGUF load of the packaged file."""
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(gemma_gguf.parent, gguf_file=gemma_gguf.name)
    texts = [
        ENGLISH,
        "  two spaces,\nnewlines\tand tabs",
        "Ünïcödé — 日本語 テキスト 🙂 1921",
        "<start_of_turn>user\nhi",
        "<bos>added <unused5> and special <eos> tokens<end_of_turn>",
        "",
    ]
    for text in texts:
        ids = gemma.tokenizer(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert gemma.tokenizer.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template"):
        assert getattr(gemma.tokenizer, name) == getattr(ref, name), name
    assert len(gemma.tokenizer) == len(ref)
    assert gemma.tokenizer.added_tokens_decoder == ref.added_tokens_decoder
    # the saved conversion lists its added tokens in its config, so loading it skips a parse of tokenizer.json
    config = json.loads((Path(gemma.tokenizer.name_or_path) / "tokenizer_config.json").read_text())
    assert len(config["added_tokens_decoder"]) == len(ref.added_tokens_decoder) > 6000


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in float64."""
    log_p = torch.log_softmax(torch.tensor(p_logits, dtype=torch.float64), -1)
    log_q = torch.log_softmax(torch.tensor(q_logits, dtype=torch.float64), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).numpy()
