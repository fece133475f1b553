"""LoRA adapters, kept apart from the frozen base weights.

Adapters are a pytree {target: (A, B)} with A (L, in, r) and B (L, r, out), stacked over layers like
the base matrices they adapt. `apply_lora` returns the base params with W + scale * A @ B in place of
each target: merged into one matrix (evaluation, export), or unmerged as a `LowRankUpdate` that the
decoder applies as x W + scale (x A) B, which training uses because its gradient never forms a full
weight-sized matrix (the same numbers in float32; with bf16 base weights the merged export rounds once).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from adl_jax.models.adapters import TARGETS
from adl_jax.models.transformer import LowRankUpdate, Params

Adapters = dict  # {target: (A, B)}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def resolve_targets(targets, params: Params) -> tuple[str, ...]:
    """Our names for the targets (HF-style `q_proj` is accepted); a name matching no weight is an error."""
    names = tuple(t.removesuffix("_proj") for t in targets)
    unknown = [t for t, n in zip(targets, names) if n not in TARGETS or n not in params["layers"]]
    if unknown or not names:
        raise ValueError(f"LoRA target(s) {unknown or '(none)'} match no weight; choose among {', '.join(TARGETS)}")
    return names


def init_adapters(params: Params, lcfg: LoraConfig, key: jax.Array) -> Adapters:
    """A ~ N(0, 1/in), B = 0: the adapted model starts equal to the base. Adapters are float32."""
    adapters = {}
    for name, k in zip(resolve_targets(lcfg.targets, params), jax.random.split(key, len(lcfg.targets))):
        L, d_in, d_out = params["layers"][name].shape
        a = jax.random.normal(k, (L, d_in, lcfg.rank), jnp.float32) / jnp.sqrt(d_in)
        adapters[name] = (a, jnp.zeros((L, lcfg.rank, d_out), jnp.float32))
    return adapters


def apply_lora(
    params: Params, adapters: Adapters, scale: float, *, dropout: float = 0.0, key=None, merge: bool = True
) -> Params:
    """Base params with W + scale * A @ B for each adapted matrix: merged in W's dtype, or unmerged
    (`merge=False`) as a `LowRankUpdate`.

    Dropout is PEFT's `lora_dropout` (what the exported adapter_config.json declares): every element of
    the LoRA branch's input dropped independently, per token, while the base weight sees the input
    unchanged. It needs the unmerged form (a mask per token has no merged equivalent); `key` draws the
    masks, one key per target and layer.
    """
    if dropout and merge:
        raise ValueError("LoRA dropout masks each token's input to the adapter: apply it unmerged (merge=False)")
    layers = dict(params["layers"])
    keys = jax.random.split(key, len(adapters)) if dropout else [None] * len(adapters)
    for (name, (a, b)), k in zip(sorted(adapters.items()), keys):
        w = layers[name]
        if not merge:
            per_layer = jax.random.split(k, a.shape[0]) if dropout else None
            layers[name] = LowRankUpdate(w, a, b, scale, dropout_key=per_layer, dropout=dropout)
            continue
        delta = jnp.einsum("lir,lro->lio", a, b, preferred_element_type=jnp.float32)
        layers[name] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
    return {**params, "layers": layers}
