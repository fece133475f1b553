"""A tiny GGUF writer for tests: an HF model written the way llama.cpp's converter writes it (its tensor
names, Q/K row permutation, 1 + w Gemma norms, metadata keys), with a small sentencepiece-style vocabulary."""

from __future__ import annotations

import string

import gguf
import numpy as np

GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3_text": "gemma3"}

# A tiny sentencepiece-style vocabulary for `write_gguf`: specials, letters, the merges of a few words.
TINY_WORDS = ("the", "cat", "sat", "on", "mat", "a", "dog")
_PIECES = ["<pad>", "<s>", "</s>", "<unk>", "\u2581", *string.ascii_lowercase, ".", ","]
_PIECES += [p for w in TINY_WORDS for p in ("\u2581" + w[: i + 1] for i in range(len(w))) if p not in _PIECES]
_PIECES += [w[i:j] for w in TINY_WORDS for i in range(len(w)) for j in range(i + 2, len(w) + 1)]
TINY_TOKENS = list(dict.fromkeys(_PIECES))


def write_gguf(model, path, chat_template: str | None = None, matrix_type=gguf.GGMLQuantizationType.F32) -> None:
    """Write a tiny HF model as a GGUF with the conventions of llama.cpp's convert_hf_to_gguf.py: F32, or
    its matrices quantized to `matrix_type`."""
    c = model.config
    arch = GGUF_ARCH[c.model_type]
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)
    w.add_rope_freq_base(rope["rope_theta"])
    if arch == "llama":
        w.add_rope_dimension_count(c.head_dim)
        w.add_vocab_size(c.vocab_size)
    if rope["rope_type"] == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if arch.startswith("gemma"):
        w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    if arch == "gemma3" and c.layer_types != [
        "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(c.num_hidden_layers)
    ]:
        w.add_sliding_window_pattern([t == "sliding_attention" for t in c.layer_types])

    tokens = TINY_TOKENS + [f"<unused{i}>" for i in range(c.vocab_size - len(TINY_TOKENS))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 4 + [-float(i) for i in range(len(tokens) - 4)])
    w.add_token_types([3, 3, 3, 2] + [1] * (len(tokens) - 4))
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_pad_token_id(c.pad_token_id)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    if chat_template:
        w.add_chat_template(chat_template)

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, c.num_hidden_layers)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        x = t.detach().numpy().astype(np.float32)
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = c.num_attention_heads if "q_proj" in hf_name else c.num_key_value_heads
            x = x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            x = x + 1
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if x.ndim == 2 and matrix_type != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(x, matrix_type), raw_dtype=matrix_type)
        else:
            w.add_tensor(name, x)
    if rope["rope_type"] == "llama3":
        w.add_tensor("rope_freqs.weight", _llama3_rope_factors(rope, c.head_dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp's converter writes instead of Llama 3's rope parameters."""
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    out = []
    for wavelen in 2 * np.pi / freqs:
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"]
            )
            out.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.asarray(out, np.float32)


def tiny_overrides(family: str) -> dict:
    """What a GGUF can express: Gemma's query scale is head_dim in llama.cpp; Llama 3's rope scaling
    keeps Meta's released constants (only `factor` varies)."""
    if family.startswith("gemma"):
        return dict(query_pre_attn_scalar=16)
    if family == "llama":
        return dict(
            max_position_embeddings=131072,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )
    return {}
