"""Tokenizers through `transformers`, from an HF model directory or a GGUF file.

A GGUF carries its vocabulary as metadata, and building a fast tokenizer from it is slow (about 16 s
for Gemma 3's 262k-token vocabulary, against about 2.5 s to reload a saved one). So the converted
tokenizer is saved under `cache_dir`, keyed by the file's path, size and modification time, and reloaded
from there. The chat template travels with it (`tokenizer.chat_template` in the GGUF metadata).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

# Any one of these makes a directory loadable by AutoTokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def load_tokenizer(source: str | Path, cache_dir: str | Path | None = None):
    """The tokenizer of an HF model directory or a .gguf file. `cache_dir`: where GGUF conversions are kept
    (None: convert every time)."""
    source = Path(source)
    if source.is_dir():
        from transformers import AutoTokenizer

        if not any((source / name).exists() for name in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{source} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the model's tokenizer "
                "there with tokenizer.save_pretrained(dir)"
            )
        tokenizer = AutoTokenizer.from_pretrained(source)
        processor_template = source / "chat_template.json"  # multimodal checkpoints keep it with the processor
        if tokenizer.chat_template is None and processor_template.exists():
            tokenizer.chat_template = json.loads(processor_template.read_text())["chat_template"]
        return tokenizer
    if source.suffix != ".gguf" or not source.is_file():
        raise FileNotFoundError(f"no tokenizer source at {source}: give an HF model directory or a .gguf file")
    if cache_dir is None:
        return gguf_tokenizer(source)
    saved = Path(cache_dir) / f"{source.stem}-{_file_key(source)}"
    if not saved.is_dir():
        _save_atomically(gguf_tokenizer(source), saved)
    # A conversion is always this class; naming it spares AutoTokenizer's imports (torch among them, where
    # torch is installed: 1.5 s of a load)
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(saved)


def gguf_tokenizer(path: Path):
    """A GGUF's tokenizer, built by transformers' own GGUF conversion from the metadata as the `gguf` package
    reads it: `AutoTokenizer.from_pretrained(..., gguf_file=)` reads it with a module that imports torch,
    which is no runtime dependency of ours."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    from adl_jax.models.gguf import GGUFFile

    f = GGUFFile(path)
    fields = {
        group: {name: f.meta(f"tokenizer.{key}") for key, name in keys.items() if f"tokenizer.{key}" in f.fields}
        for group, keys in GGUF_TOKENIZER_MAPPING.items()
    }
    vocab, config = fields["tokenizer"], fields["tokenizer_config"]
    if vocab.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to a sentencepiece vocabulary unless told not to
        config.setdefault("add_bos_token", True)
    for name in ("bos", "eos", "unk", "pad"):
        token_id = vocab.get(f"{name}_token_id")
        config[f"{name}_token"] = vocab["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(f.arch, vocab)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)


def _file_key(path: Path) -> str:
    """The file's identity, and the form the conversion is saved in (2: with its added tokens recorded)."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:2".encode()).hexdigest()[:16]


def _record_added_tokens(saved: Path) -> None:
    """Copy tokenizer.json's added tokens into tokenizer_config.json (`added_tokens_decoder`): without them
    there, transformers parses the whole tokenizer.json once more in Python on every load (about 1 of 2.2 s
    for Gemma 3's 262k-token vocabulary)."""
    config_file = saved / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    added = json.loads((saved / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    config["added_tokens_decoder"] = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _save_atomically(tokenizer, target: Path) -> None:
    """Save into a scratch directory renamed into place, so a crash never leaves a partial cache entry."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        tokenizer.save_pretrained(tmp)
        _record_added_tokens(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():  # a concurrent writer that won the race is fine; anything else is not
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
