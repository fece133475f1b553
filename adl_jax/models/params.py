"""Every decoder parameter, declared once: its shape, logical axes, checkpoint names and when it exists.

`PARAMS` is the only place a parameter is described. The param layout (`param_shapes`), the sharding
(`param_specs`, `param_shardings`), the HF and GGUF tensor names, the shape check of a checkpoint against
its config and the tensor-by-tensor reading of one onto a mesh are all derived from it, so adding a
parameter to a family is one entry here (plus its use in `transformer.py`).

Layout: a dict of arrays; per-layer tensors sit under "layers", stacked along a leading `num_layers` axis.
Matrices are (in, out); torch and GGUF store them (out, in) (`transposed`). Norm weights are stored as the
checkpoint stores them; Gemma's (1 + w) lives in `cfg.norm_offset`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from operator import attrgetter

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from adl_jax.models.config import ModelConfig
from adl_jax.models.transformer import Params
from adl_jax.sharding import Rules, materialize, partition_specs

HF_LAYER = "model.layers.{}."  # prefix of layer i's tensors in an HF checkpoint
GGUF_LAYER = "blk.{}."  # and in a GGUF file


# The size of each logical axis. "heads"/"kv_heads" are the flattened (heads x head_dim) projections;
# "norm" is a hidden-size vector that is replicated (norm weights, the output bias).
AXIS_SIZES: dict[str, Callable[[ModelConfig], int]] = {
    "layers": attrgetter("num_layers"),
    "vocab": attrgetter("vocab_size"),
    "embed": attrgetter("hidden_size"),
    "norm": attrgetter("hidden_size"),
    "heads": lambda c: c.num_heads * c.head_dim,
    "kv_heads": lambda c: c.num_kv_heads * c.head_dim,
    "mlp": attrgetter("intermediate_size"),
    "head_dim": attrgetter("head_dim"),
}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: its logical axes (which give its shape), its checkpoint names and when it exists.

    A parameter whose first axis is "layers" stacks one checkpoint tensor per layer, named under the layer
    prefix. `hf_sandwich` replaces `hf` in families with sandwich norms (Gemma renames the MLP's norm).
    `rotary_heads`: the number of heads along the output axis that rotary embeddings turn (Q and K).
    """

    name: str
    axes: tuple[str, ...]
    hf: str
    gguf: str
    transposed: bool = False  # the checkpoints store this matrix (out, in), torch's Linear layout
    present: Callable[[ModelConfig], bool] = lambda cfg: True
    hf_sandwich: str | None = None
    rotary_heads: Callable[[ModelConfig], int] | None = None

    @property
    def per_layer(self) -> bool:
        return self.axes[0] == "layers"

    def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        return tuple(AXIS_SIZES[a](cfg) for a in self.axes)

    def file_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The shape of one checkpoint tensor of this parameter, in numpy order."""
        dims = self.shape(cfg)[1:] if self.per_layer else self.shape(cfg)
        return dims[::-1] if self.transposed else dims

    def hf_names(self, cfg: ModelConfig) -> list[str]:
        name = self.hf_sandwich if cfg.sandwich_norms and self.hf_sandwich else self.hf
        return self._per_layer(cfg, HF_LAYER, name)

    def gguf_names(self, cfg: ModelConfig) -> list[str]:
        return self._per_layer(cfg, GGUF_LAYER, self.gguf)

    def _per_layer(self, cfg: ModelConfig, prefix: str, name: str) -> list[str]:
        return [prefix.format(i) + name for i in range(cfg.num_layers)] if self.per_layer else [name]


_L = "layers"
_POST_ATTENTION = "post_attention_layernorm.weight"  # HF: Gemma's norm after attention, the others' before the MLP
_Q_HEADS, _KV_HEADS = attrgetter("num_heads"), attrgetter("num_kv_heads")

PARAMS: dict[str, ParamSpec] = {
    p.name: p
    for p in (
        ParamSpec("embed", ("vocab", "embed"), "model.embed_tokens.weight", "token_embd.weight"),
        ParamSpec("final_norm", ("norm",), "model.norm.weight", "output_norm.weight"),
        ParamSpec(
            "lm_head",
            ("embed", "vocab"),
            "lm_head.weight",
            "output.weight",
            transposed=True,
            present=lambda c: not c.tie_embeddings,
        ),
        ParamSpec("attn_norm", (_L, "norm"), "input_layernorm.weight", "attn_norm.weight"),
        ParamSpec(
            "mlp_norm", (_L, "norm"), _POST_ATTENTION, "ffn_norm.weight", hf_sandwich="pre_feedforward_layernorm.weight"
        ),
        ParamSpec(
            "q",
            (_L, "embed", "heads"),
            "self_attn.q_proj.weight",
            "attn_q.weight",
            transposed=True,
            rotary_heads=_Q_HEADS,
        ),
        ParamSpec(
            "k",
            (_L, "embed", "kv_heads"),
            "self_attn.k_proj.weight",
            "attn_k.weight",
            transposed=True,
            rotary_heads=_KV_HEADS,
        ),
        ParamSpec("v", (_L, "embed", "kv_heads"), "self_attn.v_proj.weight", "attn_v.weight", transposed=True),
        ParamSpec("o", (_L, "heads", "embed"), "self_attn.o_proj.weight", "attn_output.weight", transposed=True),
        ParamSpec("gate", (_L, "embed", "mlp"), "mlp.gate_proj.weight", "ffn_gate.weight", transposed=True),
        ParamSpec("up", (_L, "embed", "mlp"), "mlp.up_proj.weight", "ffn_up.weight", transposed=True),
        ParamSpec("down", (_L, "mlp", "embed"), "mlp.down_proj.weight", "ffn_down.weight", transposed=True),
        ParamSpec(
            "q_bias",
            (_L, "heads"),
            "self_attn.q_proj.bias",
            "attn_q.bias",
            present=attrgetter("qkv_bias"),
            rotary_heads=_Q_HEADS,
        ),
        ParamSpec(
            "k_bias",
            (_L, "kv_heads"),
            "self_attn.k_proj.bias",
            "attn_k.bias",
            present=attrgetter("qkv_bias"),
            rotary_heads=_KV_HEADS,
        ),
        ParamSpec("v_bias", (_L, "kv_heads"), "self_attn.v_proj.bias", "attn_v.bias", present=attrgetter("qkv_bias")),
        ParamSpec("o_bias", (_L, "norm"), "self_attn.o_proj.bias", "attn_output.bias", present=attrgetter("o_bias")),
        ParamSpec(
            "q_norm", (_L, "head_dim"), "self_attn.q_norm.weight", "attn_q_norm.weight", present=attrgetter("qk_norm")
        ),
        ParamSpec(
            "k_norm", (_L, "head_dim"), "self_attn.k_norm.weight", "attn_k_norm.weight", present=attrgetter("qk_norm")
        ),
        ParamSpec(
            "post_attn_norm",
            (_L, "norm"),
            _POST_ATTENTION,
            "post_attention_norm.weight",
            present=attrgetter("sandwich_norms"),
        ),
        ParamSpec(
            "post_mlp_norm",
            (_L, "norm"),
            "post_feedforward_layernorm.weight",
            "post_ffw_norm.weight",
            present=attrgetter("sandwich_norms"),
        ),
    )
}


def _tree(cfg: ModelConfig, leaf: Callable[[ParamSpec], object]) -> Params:
    """A value per parameter the config has, in the param layout."""
    present = [p for p in PARAMS.values() if p.present(cfg)]
    tree = {p.name: leaf(p) for p in present if not p.per_layer}
    tree["layers"] = {p.name: leaf(p) for p in present if p.per_layer}
    return tree


def param_shapes(cfg: ModelConfig) -> Params:
    """The shape of every parameter, as a pytree with the param layout."""
    return _tree(cfg, lambda p: p.shape(cfg))


def param_axes(cfg: ModelConfig) -> Params:
    """The logical axes of every parameter, as a pytree with the param layout."""
    return _tree(cfg, lambda p: p.axes)


def param_specs(cfg: ModelConfig, sizes: Mapping[str, int], rules: Rules = Rules()) -> Params:
    """The PartitionSpec of every parameter on a mesh of these axis sizes; needs no devices (the planner)."""
    return partition_specs(param_shapes(cfg), param_axes(cfg), sizes, rules)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules = Rules()) -> Params:
    specs = param_specs(cfg, mesh.shape, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def hf_tensor_names(cfg: ModelConfig) -> dict[str, list[str]]:
    """Our name -> the HF tensor names it is made of (one per layer for per-layer parameters)."""
    return {p.name: p.hf_names(cfg) for p in PARAMS.values() if p.present(cfg)}


def gguf_tensor_names(cfg: ModelConfig) -> dict[str, list[str]]:
    """Our name -> the GGUF tensor names it is made of (one per layer for per-layer parameters)."""
    return {p.name: p.gguf_names(cfg) for p in PARAMS.values() if p.present(cfg)}


def check_tensors(
    cfg: ModelConfig,
    names: Mapping[str, list[str]],
    found: Mapping[str, tuple[int, ...]],
    source: str,
    described_by: str,
    unused_ok: Callable[[str], bool] = lambda name: False,
) -> None:
    """Every tensor `names` expects present in `found` (file name -> shape) with the shape the config implies,
    and nothing left over but what `unused_ok` allows; one error listing every problem, before any read."""
    problems = []
    for ours, tensor_names in names.items():
        want = PARAMS[ours].file_shape(cfg)
        for n in tensor_names:
            if n not in found:
                problems.append(f"missing tensor {n}")
            elif tuple(found[n]) != want:
                problems.append(f"tensor {n} has shape {tuple(found[n])}, {described_by} implies {want}")
    known = {n for ns in names.values() for n in ns}
    extra = [n for n in found if n not in known and not unused_ok(n)]
    if extra:
        problems.append(f"{len(extra)} tensor(s) adl-jax's {cfg.family} decoder does not use, e.g. {extra[:3]}")
    if problems:
        raise ValueError(
            f"{source} does not match its {described_by}:\n  "
            + "\n  ".join(problems[:10])
            + ("\n  ..." if len(problems) > 10 else "")
        )


def read_params(
    cfg: ModelConfig,
    names: Mapping[str, list[str]],
    read_tensor: Callable[[ParamSpec, str, tuple[slice, ...]], np.ndarray],
    dtype,
    mesh: Mesh | None = None,
    rules: Rules = Rules(),
) -> Params:
    """The param pytree placed on `mesh`, read one device shard at a time through
    `read_tensor(param, file tensor name, index in the file's order) -> array in the file's order`."""

    def one(p: ParamSpec, name: str, index: tuple[slice, ...]) -> np.ndarray:
        arr = read_tensor(p, name, index[::-1] if p.transposed else index)
        return arr.T if p.transposed else arr

    def read(ours: str, index: tuple[slice, ...]) -> np.ndarray:
        p = PARAMS[ours]
        if not p.per_layer:
            return one(p, names[ours][0], index)
        layers = range(*index[0].indices(cfg.num_layers))
        return np.stack([one(p, names[ours][i], index[1:]) for i in layers])

    return materialize(param_shapes(cfg), param_axes(cfg), read, dtype, mesh, rules)
