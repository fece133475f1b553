"""The XLA:CPU setting `import adl_jax` makes: reductions stay out of YNNPACK's dot fusions."""

import os
import re
import subprocess
import sys
from importlib import metadata

import jax
import jax.numpy as jnp
import pytest

import adl_jax

KNOWN = (
    adl_jax.YNN_JAXLIB[0] <= tuple(int(x) for x in metadata.version("jaxlib").split(".")[:2]) < adl_jax.YNN_JAXLIB[1]
)


def flags_after_import(xla_flags: str | None) -> str:
    """XLA_FLAGS as a fresh process sees it after `import adl_jax`, started with `xla_flags` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = "import os, adl_jax; print(os.environ.get('XLA_FLAGS', ''))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not KNOWN, reason="a jaxlib release not known to take the flag")
def test_import_adds_the_flag_and_keeps_the_users_flags():
    assert flags_after_import(None).split() == [f"{adl_jax.YNN_FLAG}={adl_jax.YNN_NO_REDUCE}"]
    assert flags_after_import("--xla_cpu_enable_fast_math=false").split() == [
        "--xla_cpu_enable_fast_math=false",
        f"{adl_jax.YNN_FLAG}={adl_jax.YNN_NO_REDUCE}",
    ]
    own = f"{adl_jax.YNN_FLAG}=+reduce"
    assert flags_after_import(own).split() == [own]  # the user's own setting of it wins


def ynn_fusion_bodies(hlo: str) -> list[str]:
    """The bodies of the YNNPACK fusions in a compiled module's text."""
    bodies = {m.group(1): m.group(0) for m in re.finditer(r"^%(\S+) \(.*?^}", hlo, flags=re.M | re.S)}
    return [bodies[name] for name in re.findall(r"calls=%([\w.-]+).*__ynn_fusion", hlo)]


@pytest.mark.skipif(not KNOWN or jax.default_backend() != "cpu", reason="XLA:CPU with a jaxlib that takes the flag")
def test_softmax_is_not_fused_into_the_vocabulary_dot():
    """In this very process (jax started after `import adl_jax`): the dot of softmax(h @ E^T) still goes to
    YNNPACK, with no reduction in its fusion."""
    h, e = jnp.ones((90, 64)), jnp.ones((4096, 64))
    hlo = jax.jit(lambda h, e: jax.nn.softmax(h @ e.T, axis=-1)).lower(h, e).compile().as_text()
    bodies = ynn_fusion_bodies(hlo)
    assert any(" dot(" in body for body in bodies)
    assert not any(" reduce(" in body for body in bodies)
