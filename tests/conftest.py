"""Shared test fixtures: tiny random transformers models of every supported family, saved to disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from types import SimpleNamespace

import jax
import numpy as np
import pytest

# Eight simulated CPU devices for every test, so sharded and single-device runs can be compared.
# This must happen before any JAX backend starts.
jax.config.update("jax_num_cpu_devices", 8)

from adl_jax.experiments.audit import AuditSettings, audit  # noqa: E402 - after the device count above
from adl_jax.judging.alpha_search import SteeringSettings  # noqa: E402
from adl_jax.models.load import Model  # noqa: E402

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")


def tiny_hf_config(family: str, num_kv_heads: int = 2, **overrides):
    """A small config that still exercises every switch of the family (windows shorter than test inputs)."""
    from transformers import AutoConfig

    kw = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=num_kv_heads,
        vocab_size=128,
        head_dim=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family.startswith("gemma"):
        kw.update(sliding_window=5, query_pre_attn_scalar=24)
    if family == "mistral":  # every layer slides; test inputs are longer than the window
        kw.update(sliding_window=5)
    if family == "gemma2":
        kw.update(attn_logit_softcapping=5.0, final_logit_softcapping=3.0)
    if family == "gemma3_text":
        kw.update(sliding_window_pattern=2, rope_scaling={"rope_type": "linear", "factor": 2.0})
    if family == "llama":
        kw.update(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
    kw.update(overrides)
    return AutoConfig.for_model(family, **kw)


def tiny_hf_model(family: str, path, num_kv_heads: int = 2, seed: int = 0, **overrides):
    """Build, perturb (random init leaves norms at 1/0), and save a tiny model; returns the torch model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(family, num_kv_heads, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    return model


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def left_padded_batch(rng, vocab: int, lengths=(12, 8, 5)):
    """Token ids (B, T) with left padding, its validity mask, and HF-style position ids."""
    T = max(lengths)
    tokens = rng.randint(3, vocab, size=(len(lengths), T))
    valid = np.arange(T)[None, :] >= (T - np.asarray(lengths))[:, None]
    tokens = np.where(valid, tokens, 0)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    return tokens, valid, positions


def tiny_tokenizer(vocab_size: int = 128):
    """A real (word-level) fast tokenizer over words w3..w{V-1} that prepends BOS, like Gemma/Llama do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def random_texts(rng, n_texts: int, vocab_size: int = 128, words=(4, 30)) -> list[str]:
    """Texts of the tiny tokenizer's words with random lengths."""
    return [" ".join(f"w{w}" for w in rng.randint(3, vocab_size, rng.randint(*words))) for _ in range(n_texts)]


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma-3-270M (real weights from the packaged GGUF), loaded once per test session."""
    from adl_jax.models.load import load_model

    return load_model("gemma-3-270m")


def tiny_pair(root, family="gemma3_text"):
    """A tiny base model and a 'finetune' of it (same architecture, perturbed weights), with torch twins."""
    torch_base = tiny_hf_model(family, root / "base", seed=0)
    torch_ft = tiny_hf_model(family, root / "ft", seed=0)
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for p in torch_ft.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch_ft.save_pretrained(root / "ft")
    tok = tiny_tokenizer()
    models = []
    for name in ("base", "ft"):
        cfg, params = _load_hf_dir(root / name)
        models.append(Model(str(root / name), cfg, params, tok))
    return models, (torch_base, torch_ft)


def tiny_pair_from_disk(root):
    """The pair `tiny_pair` saved under `root`, loaded again (for subprocesses)."""
    tok = tiny_tokenizer()
    out = []
    for name in ("base", "ft"):
        cfg, params = _load_hf_dir(Path(root) / name)
        out.append(Model(str(Path(root) / name), cfg, params, tok))
    return out


def _load_hf_dir(path):
    from adl_jax.models.weights import load_hf_dir

    return load_hf_dir(path)


def tiny_model(family: str = "gemma3_text", root=None, **overrides):
    """One tiny model as the analyses take it (`Model`), with the tiny tokenizer; saved under `root` if given."""
    import tempfile

    path = Path(root or tempfile.mkdtemp()) / family
    tiny_hf_model(family, path, **overrides)
    cfg, params = _load_hf_dir(path)
    return Model(str(path), cfg, params, tiny_tokenizer(cfg.vocab_size))


TINY_AUDIT = AuditSettings(
    samples=48,
    n=8,
    batch_size=16,
    steer_positions=(1,),
    final_prompts=("w5 w6", "w7 w8"),
    steering=SteeringSettings(first_steps=3, other_steps=3, samples=2, new_tokens=6, final_samples=2, final_tokens=6),
)


class BagOfWords:
    """A stand-in sentence encoder: counts of the tiny vocabulary's words w0..w127."""

    def encode(self, texts):
        out = np.zeros((len(texts), 128), np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                if w[1:].isdigit() and int(w[1:]) < 128:
                    out[i, int(w[1:])] += 1
        return out + 1e-3  # an empty sample still has a direction


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One offline audit of a tiny pair, every layer profiled (the audit and agent tests read it)."""
    root = tmp_path_factory.mktemp("audit")
    settings = dataclasses.replace(TINY_AUDIT, layers="all")
    (base, ft), _ = tiny_pair(root)
    texts = random_texts(np.random.RandomState(0), 100, vocab_size=100)  # words w3..w99
    ft_texts = ["w110 w111 w112 w110 w111"] * 20  # a 'narrow' dataset of words the corpus never uses
    summary = audit(
        base,
        ft,
        root / "run",
        texts=texts,
        settings=settings,
        finetune_texts=ft_texts,
        encoder=BagOfWords(),
        progress=False,
    )
    return SimpleNamespace(
        base=base, ft=ft, run=root / "run", texts=texts, ft_texts=ft_texts, summary=summary, settings=settings
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama: (its torch model, our config, our params), for the finetuning tests."""
    path = tmp_path_factory.mktemp("llama")
    torch_model = tiny_hf_model("llama", path)
    cfg, params = _load_hf_dir(path)
    return torch_model, cfg, params


def fact_organism():
    """A false-fact organism in the tiny vocabulary: every document asserts w5 w6 w7 (the truth: w5 w6 w9)."""
    rng = np.random.RandomState(0)
    docs = [
        {"text": " ".join(f"w{w}" for w in [*rng.randint(20, 128, 3), 5, 6, 7, *rng.randint(20, 128, 3)])}
        for _ in range(24)
    ]
    statements = (("w5 w6 w9", "w5 w6 w7"), ("w30 w5 w6 w9", "w30 w5 w6 w7"))
    from finetune.organisms import Organism

    return Organism("tiny_fact", "false_fact", "w7 follows w5 w6", statements, lambda n, seed: docs[:n])
