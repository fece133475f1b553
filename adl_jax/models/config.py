"""ModelConfig: every architectural fact the decoder needs, as one frozen, hashable value.

The supported families (Llama 3.x, Mistral, Qwen 2.5, Qwen 3, Gemma 2, Gemma 3) differ only in a handful
of switches; they are all flags here so that `transformer.py` has a single code path. The config is
static under `jax.jit`. It is built from an HF `config.json` dict (old `rope_theta`/`rope_scaling`
style or the newer `rope_parameters` style); GGUF metadata is first translated into that dict form.
Fields we do not understand are refused rather than silently ignored: a silently dropped switch would
corrupt every activation downstream. A multimodal Gemma 3 config (4B and up) is read as its text decoder.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from adl_jax import io

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")

# Keys that never change the forward computation (bookkeeping, training-time or generation settings).
_INERT_KEYS = frozenset(
    """
    _name_or_path architectures dtype torch_dtype transformers_version use_cache initializer_range
    attention_dropout id2label label2id output_attentions output_hidden_states return_dict problem_type
    chunk_size_feed_forward is_encoder_decoder model_type cache_implementation tokenizer_class
    _attn_implementation _attn_implementation_autoset attn_implementation max_position_embeddings
    bos_token_id eos_token_id pad_token_id max_window_layers use_sliding_window tie_encoder_decoder
    sliding_window_size
    """.split()
)  # sliding_window_size: a leftover in early Gemma 2 configs that transformers never reads (sliding_window rules)
# Keys whose meaning the parser below handles.
_HANDLED_KEYS = frozenset(
    """
    vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads
    head_dim rms_norm_eps hidden_act hidden_activation attention_bias mlp_bias tie_word_embeddings
    rope_theta rope_scaling rope_parameters rope_local_base_freq layer_types sliding_window
    sliding_window_pattern _sliding_window_pattern query_pre_attn_scalar attn_logit_softcapping
    final_logit_softcapping use_bidirectional_attention pretraining_tp
    """.split()
)
# Top-level keys of a multimodal Gemma 3 config besides its text_config: the vision tower (vision_config) is not
# loaded and the image-token bookkeeping never touches a text-only forward.
_MULTIMODAL_KEYS = frozenset(
    "vision_config mm_tokens_per_image boi_token_index eoi_token_index image_token_index initializer_range".split()
)
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


@dataclasses.dataclass(frozen=True)
class Rope:
    """Rotary embedding of one attention type: base frequency plus an optional HF scaling rule."""

    theta: float
    kind: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies (head_dim/2,), computed as transformers does, in float32."""
        inv = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
        inv = inv.astype(np.float32)
        if self.kind == "linear":
            return (inv / self.factor).astype(np.float32)
        if self.kind == "llama3":
            low_wavelen = self.original_max_position / self.low_freq_factor
            high_wavelen = self.original_max_position / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
            smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor
            )
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        return inv


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only model. Hashable, so it can be a static argument of `jax.jit`."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float = 1e-6
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w)
    activation: str = "silu"  # silu | gelu_tanh
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sandwich_norms: bool = False  # Gemma: extra norms after attention and after the MLP
    embed_scale: float | None = None  # Gemma multiplies embeddings by sqrt(hidden_size)
    attn_scale: float = 1.0  # multiplies q.k
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    local_layers: tuple[bool, ...] = ()  # per layer: True = sliding-window attention
    rope_global: Rope = Rope(10000.0)
    rope_local: Rope = Rope(10000.0)
    tie_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # The layer stack as one lax.scan: XLA compiles one block, not one per layer. On Gemma-3-270M (2 CPU cores)
    # that compiles a LoRA step in 4 s instead of 20 and a decode loop in 2 s instead of 12, and runs no slower.
    scan_layers: bool = True

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; adl-jax supports {', '.join(FAMILIES)}")
        if len(self.local_layers) != self.num_layers:
            raise ValueError(f"local_layers has {len(self.local_layers)} entries for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    @property
    def middle_layer(self) -> int:
        """The layer ADL reads by default: int(0.5 * (num_layers - 1))."""
        return int(0.5 * (self.num_layers - 1))

    @classmethod
    def from_hf(cls, d: dict, *, ignore_keys: tuple[str, ...] = ()) -> ModelConfig:
        """Build from an HF config dict. Unknown keys raise unless listed in `ignore_keys`."""
        family = d.get("model_type")
        if is_multimodal(d):
            return cls.from_hf(_gemma3_text_config(d, ignore_keys), ignore_keys=ignore_keys)
        if family not in FAMILIES:
            raise ValueError(f"unsupported architecture model_type={family!r}; adl-jax supports {', '.join(FAMILIES)}")
        unknown = sorted(set(d) - _INERT_KEYS - _HANDLED_KEYS - set(ignore_keys))
        if unknown:
            raise ValueError(
                f"config field(s) {unknown} are not understood by adl-jax's {family} decoder and might change "
                "the computation; if you know they do not, pass ignore_keys=" + repr(tuple(unknown))
            )
        if d.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention=True (an encoder variant) is not supported")
        if d.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported by adl-jax's decoder")
        if d.get("pretraining_tp", 1) != 1:
            raise ValueError("pretraining_tp != 1 is not supported; re-save the checkpoint with pretraining_tp=1")

        gemma = family.startswith("gemma")
        hidden, heads = d["hidden_size"], d["num_attention_heads"]
        head_dim = d.get("head_dim") or hidden // heads
        n_layers = d["num_hidden_layers"]
        act_name = d.get("hidden_activation") or d.get("hidden_act") or "silu"
        if act_name not in _ACTIVATIONS:
            raise ValueError(f"activation {act_name!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
        rope_global, rope_local = _parse_rope(d, family)
        eos = d.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        return cls(
            family=family,
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            intermediate_size=d["intermediate_size"],
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            norm_eps=d.get("rms_norm_eps", 1e-6),
            norm_offset=1.0 if gemma else 0.0,
            activation=_ACTIVATIONS[act_name],
            qkv_bias=family == "qwen2" or bool(d.get("attention_bias")),
            o_bias=family != "qwen2" and bool(d.get("attention_bias")),
            qk_norm=family in ("qwen3", "gemma3_text"),
            sandwich_norms=gemma,
            embed_scale=float(hidden) ** 0.5 if gemma else None,
            attn_scale=(d.get("query_pre_attn_scalar") or head_dim) ** -0.5 if gemma else head_dim**-0.5,
            attn_softcap=d.get("attn_logit_softcapping") if gemma else None,
            final_softcap=d.get("final_logit_softcapping") if gemma else None,
            sliding_window=d.get("sliding_window"),
            local_layers=_parse_layer_types(d, family, n_layers),
            rope_global=rope_global,
            rope_local=rope_local,
            tie_embeddings=d.get("tie_word_embeddings", gemma),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos,
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf(self) -> dict:
        """An HF config.json dict that transformers (and `from_hf`) read back as this architecture."""
        gemma = self.family.startswith("gemma")
        arch = {
            "llama": "Llama",
            "mistral": "Mistral",
            "qwen2": "Qwen2",
            "qwen3": "Qwen3",
            "gemma2": "Gemma2",
            "gemma3_text": "Gemma3",
        }
        d = {
            "model_type": self.family,
            "architectures": [f"{arch[self.family]}ForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_activation" if gemma else "hidden_act": {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[
                self.activation
            ],
            "layer_types": ["sliding_attention" if x else "full_attention" for x in self.local_layers],
            "sliding_window": self.sliding_window,
            "rope_theta": self.rope_global.theta,
            "rope_scaling": _rope_to_hf(self.rope_global),
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
        }
        if self.family != "qwen2":
            d["attention_bias"] = self.o_bias
        if gemma:
            d.update(
                query_pre_attn_scalar=round(self.attn_scale**-2),
                attn_logit_softcapping=self.attn_softcap,
                final_logit_softcapping=self.final_softcap,
            )
        if self.family == "gemma3_text":
            d["rope_local_base_freq"] = self.rope_local.theta
        return d

    @classmethod
    def from_json(cls, path: str | Path, **kw) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"no config.json at {path}: an HF model directory needs one")
        return cls.from_hf(io.read_json(path), **kw)


def is_multimodal(d: dict) -> bool:
    """A Gemma3ForConditionalGeneration config (Gemma 3 4B/12B/27B): a text decoder inside an image-text model."""
    return d.get("model_type") == "gemma3" and "text_config" in d


def _gemma3_text_config(d: dict, ignore_keys: tuple[str, ...]) -> dict:
    """The text decoder's full config from a multimodal Gemma 3 config. Published configs list only the fields
    that differ from transformers' Gemma3TextConfig defaults, so transformers fills in the rest; the top-level
    token ids (the instruction-tuned models' end-of-turn EOS) win over the text config's. The logits are those of
    Gemma3ForConditionalGeneration, which applies no final soft-cap."""
    from transformers import Gemma3TextConfig

    unknown = sorted(
        set(d) - _INERT_KEYS - _MULTIMODAL_KEYS - {"text_config", "tie_word_embeddings"} - set(ignore_keys)
    )
    if unknown:
        raise ValueError(
            f"multimodal Gemma 3 config field(s) {unknown} are not understood by adl-jax; if they do not change "
            "the text decoder, pass ignore_keys=" + repr(tuple(unknown))
        )
    text = {k: v for k, v in d["text_config"].items() if k != "model_type"}
    text.update({k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings") if k in d})
    text["final_logit_softcapping"] = None  # Gemma3ForConditionalGeneration never soft-caps, whatever it says
    return Gemma3TextConfig(**text).to_dict()


def _parse_layer_types(d: dict, family: str, n_layers: int) -> tuple[bool, ...]:
    types = d.get("layer_types")
    if types is None:
        if family == "mistral":  # transformers' Mistral: every layer slides when a window is set
            types = ["sliding_attention" if d.get("sliding_window") else "full_attention"] * n_layers
        elif family == "gemma2":
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
        elif family == "gemma3_text":
            pattern = d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or 6
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
        elif d.get("use_sliding_window") and d.get("sliding_window"):
            first = d.get("max_window_layers", n_layers)
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
        else:
            types = ["full_attention"] * n_layers
    if len(types) != n_layers:
        raise ValueError(f"layer_types has {len(types)} entries but num_hidden_layers={n_layers}")
    bad = sorted(set(types) - {"full_attention", "sliding_attention"})
    if bad:
        raise ValueError(f"layer type(s) {bad} are not supported (only full_attention and sliding_attention)")
    if "sliding_attention" in types and not d.get("sliding_window"):
        raise ValueError("layer_types has sliding_attention layers but sliding_window is not set")
    return tuple(t == "sliding_attention" for t in types)


def _rope_to_hf(rope: Rope) -> dict | None:
    if rope.kind == "default":
        return None
    if rope.kind == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    return {
        "rope_type": "llama3",
        "factor": rope.factor,
        "low_freq_factor": rope.low_freq_factor,
        "high_freq_factor": rope.high_freq_factor,
        "original_max_position_embeddings": rope.original_max_position,
    }


def _rope_from_params(p: dict | None, default_theta: float) -> Rope:
    p = dict(p or {})
    kind = p.get("rope_type", p.get("type", "default"))
    theta = float(p.get("rope_theta", default_theta))
    if kind == "default":
        return Rope(theta)
    if kind == "linear":
        return Rope(theta, "linear", factor=float(p["factor"]))
    if kind == "llama3":
        return Rope(
            theta,
            "llama3",
            factor=float(p["factor"]),
            low_freq_factor=float(p["low_freq_factor"]),
            high_freq_factor=float(p["high_freq_factor"]),
            original_max_position=int(p["original_max_position_embeddings"]),
        )
    raise ValueError(f"rope type {kind!r} is not supported (supported: default, linear, llama3)")


def _parse_rope(d: dict, family: str) -> tuple[Rope, Rope]:
    """(global, local) rope. Gemma 3 gives local layers their own base frequency."""
    params = d.get("rope_parameters")
    if params is not None and "full_attention" in params:  # per-layer-type form (newer transformers)
        glob = _rope_from_params(params["full_attention"], 1e6)
        return glob, _rope_from_params(params.get("sliding_attention"), 1e4)
    if params is None:  # older form: rope_theta + rope_scaling
        params = dict(d.get("rope_scaling") or {})
        params.setdefault("rope_theta", d.get("rope_theta", 1e6 if family == "gemma3_text" else 1e4))
    glob = _rope_from_params(params, 1e4)
    if family == "gemma3_text":
        return glob, Rope(float(d.get("rope_local_base_freq", 1e4)))
    return glob, glob
