"""GGUF files (llama.cpp's format) -> ModelConfig + our param pytree.

The metadata is translated into an HF config dict, so `ModelConfig.from_hf` validates GGUF and
safetensors models along one path. Tensor names and shapes come from `params.PARAMS`; tensors are
dequantized lazily inside `params.read_params`'s read callback, per device shard and only the rows that
shard needs (a quant block never crosses a row).
llama.cpp's converter changed three things that are undone here: Gemma norm weights are stored as
1 + w (every `*norm.weight`), llama-arch Q/K rows are interleaved for its rotary layout, and matrices
are (out, in) like torch's.
"""

from __future__ import annotations

import dataclasses
import struct
from importlib.metadata import version
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np

from adl_jax.models.config import ModelConfig, Rope
from adl_jax.models.params import GGUF_LAYER, PARAMS, ParamSpec, check_tensors, gguf_tensor_names, read_params
from adl_jax.models.transformer import Params
from adl_jax.sharding import Rules

# llama.cpp architecture name -> HF model_type.
ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3_text"}

_ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's form of Llama 3 rope scaling: one divisor per frequency

# `{arch}.` metadata keys whose meaning `_hf_config` handles (or that never change the computation).
_KNOWN_KEYS = frozenset(
    """
    context_length embedding_length block_count feed_forward_length vocab_size attention.head_count
    attention.head_count_kv attention.key_length attention.value_length attention.layer_norm_rms_epsilon
    rope.freq_base rope.dimension_count rope.scaling.type rope.scaling.factor attention.sliding_window
    attention.sliding_window_pattern attn_logit_softcapping final_logit_softcapping
    """.split()
)


class GGUFFile:
    """Metadata and lazily dequantized tensors of one GGUF file.

    The header is parsed here rather than by `gguf.GGUFReader`, which makes one memmap view per array element,
    slow for a 262k-token vocabulary; here each numeric array is read whole and strings in one pass.
    Tensor data stays memory-mapped and is dequantized by the `gguf` package."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        try:
            self.fields, self.tensors = _read_header(self.path)
        except Exception as e:  # a bad magic or a file cut short surfaces as a struct or numpy error
            raise ValueError(f"{self.path} is not a readable GGUF file ({e}); it may be truncated") from e
        self.arch = self.meta("general.architecture")
        if (self.meta("split.count") or 1) > 1:
            raise ValueError(f"{self.path} is one part of a split GGUF; merge it first with `llama-gguf-split --merge`")

    def meta(self, key: str, default=None):
        """A metadata value. GGUF floats are float32; they come back as the shortest decimal that rounds to
        the same float32 (1e-06, not 9.999999974752427e-07), i.e. the value the converter was given."""
        value = self.fields.get(key, default)
        return float(str(np.float32(value))) if isinstance(value, float) else value

    def shape(self, name: str) -> tuple[int, ...]:
        """numpy/torch order: GGUF lists dimensions innermost first."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape))

    def rows(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """Rows (first numpy axis) of a tensor, dequantized to float32; a 1-D tensor's rows are its elements.
        A slice of rows is read from the memory map as it lies, without copying the quantized bytes first."""
        t = self.tensors[name]
        if len(t.shape) == 1:
            return gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)[rows].astype(np.float32, copy=False)
        data = t.data[rows]
        return gguf.quants.dequantize(data, t.tensor_type).reshape(len(data), -1).astype(np.float32, copy=False)

    def check_types(self, names) -> None:
        """Fail before reading any weight if the dequantizer lacks a tensor type."""
        for name in names:
            t = self.tensors[name]
            try:
                self.rows(name, np.arange(1))
            except NotImplementedError as e:
                raise ValueError(
                    f"{self.path}: tensor {name} is stored as {t.tensor_type.name}, which the installed gguf "
                    f"package ({version('gguf')}) cannot dequantize; re-quantize the model to a supported type "
                    "(e.g. `llama-quantize` to Q8_0 or Q4_K_M), or load its HF safetensors checkpoint instead"
                ) from e


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: `shape` innermost first (GGUF order); `data` memory-mapped as `gguf.quants`
    expects it (elements for float/int types, bytes per row for quantized ones)."""

    name: str
    tensor_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


_SCALARS = {
    gguf.GGUFValueType.UINT8: "u1",
    gguf.GGUFValueType.INT8: "i1",
    gguf.GGUFValueType.UINT16: "u2",
    gguf.GGUFValueType.INT16: "i2",
    gguf.GGUFValueType.UINT32: "u4",
    gguf.GGUFValueType.INT32: "i4",
    gguf.GGUFValueType.FLOAT32: "f4",
    gguf.GGUFValueType.BOOL: "?",
    gguf.GGUFValueType.UINT64: "u8",
    gguf.GGUFValueType.INT64: "i8",
    gguf.GGUFValueType.FLOAT64: "f8",
}
_PLAIN = {"F16": "f2", "F32": "f4", "F64": "f8", "I8": "i1", "I16": "i2", "I32": "i4", "I64": "i8"}


def _read_header(path: Path) -> tuple[dict, dict[str, GGUFTensor]]:
    """A GGUF file's metadata {key: value} (arrays as lists, as `gguf.ReaderField.contents` gives them) and
    its tensors by name, following the GGUF specification (versions 2 and 3, either byte order)."""
    mm = np.memmap(path, mode="r")
    buf = memoryview(mm)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("GGUF magic invalid")
    order = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"
    version_ = struct.unpack_from(order + "I", buf, 4)[0]
    if version_ not in gguf.READER_SUPPORTED_VERSIONS:
        raise ValueError(f"GGUF version {version_} is not supported")
    n_tensors, n_kv = struct.unpack_from(order + "QQ", buf, 8)
    offs = 24

    def scalar(code: str):
        nonlocal offs
        value = np.frombuffer(buf, np.dtype(order + code), 1, offs)[0]
        offs += value.nbytes
        return value.item()

    def string() -> str:
        nonlocal offs
        n = struct.unpack_from(order + "Q", buf, offs)[0]
        offs += 8 + n
        return str(buf[offs - n : offs], "utf-8")

    def value(kind: int):
        nonlocal offs
        if kind == gguf.GGUFValueType.STRING:
            return string()
        if kind != gguf.GGUFValueType.ARRAY:
            return scalar(_SCALARS[gguf.GGUFValueType(kind)])
        sub, n = struct.unpack_from(order + "IQ", buf, offs)
        offs += 12
        if sub in (gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY):
            return [value(sub) for _ in range(n)]
        dtype = np.dtype(order + _SCALARS[gguf.GGUFValueType(sub)])
        items = np.frombuffer(buf, dtype, n, offs)
        offs += items.nbytes
        return items.tolist()

    fields = {}
    for _ in range(n_kv):
        key = string()
        kind = scalar("u4")
        fields[key] = value(kind)
    infos = []
    for _ in range(n_tensors):
        name = string()
        n_dims = scalar("u4")
        dims = tuple(int(d) for d in np.frombuffer(buf, np.dtype(order + "u8"), n_dims, offs))
        offs += 8 * n_dims
        infos.append((name, dims, gguf.GGMLQuantizationType(scalar("u4")), scalar("u8")))
    align = fields.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    start = -(-offs // align) * align
    tensors = {}
    for name, dims, kind, at in infos:
        if name in tensors:
            raise ValueError(f"tensor {name} appears twice")
        shape = tuple(reversed(dims))
        if kind.name in _PLAIN:
            dtype = np.dtype(order + _PLAIN[kind.name])
        else:
            dtype, shape = np.dtype(np.uint8), gguf.quant_shape_to_byte_shape(shape, kind)
        data = np.frombuffer(buf, dtype, int(np.prod(shape)), start + at).reshape(shape)
        tensors[name] = GGUFTensor(name, kind, dims, data)
    return fields, tensors


def load_gguf(
    path: str | Path, dtype=jnp.float32, mesh=None, rules: Rules = Rules(), ignore_keys=()
) -> tuple[ModelConfig, Params]:
    """Load a GGUF model onto `mesh` (default: one device). `ignore_keys`: `{arch}.` metadata keys to skip."""
    f = GGUFFile(path)
    cfg = gguf_config(f, ignore_keys)
    names = gguf_tensor_names(cfg)
    found = {n: f.shape(n) for n in f.tensors}
    check_tensors(cfg, names, found, str(f.path), "metadata", lambda n: n == _ROPE_FREQS)
    f.check_types({n for ns in names.values() for n in ns})
    permuted = f.arch == "llama"  # llama.cpp reorders the rotary rows of Q and K for llama only
    offset = 1.0 if f.arch.startswith("gemma") else 0.0

    def read_tensor(p: ParamSpec, name: str, index: tuple[slice, ...]) -> np.ndarray:
        rotary = permuted and p.rotary_heads is not None
        rows = _unpermuted_rows(f.shape(name)[0], p.rotary_heads(cfg))[index[0]] if rotary else index[0]
        arr = f.rows(name, rows)[(slice(None), *index[1:])]
        return arr - offset if offset and name.endswith("norm.weight") else arr

    return cfg, read_params(cfg, names, read_tensor, dtype, mesh, rules)


def gguf_config(f: GGUFFile | str | Path, ignore_keys=()) -> ModelConfig:
    """The architecture from a GGUF file's metadata alone; no tensor is read (the memory planner)."""
    f = f if isinstance(f, GGUFFile) else GGUFFile(f)
    return ModelConfig.from_hf(_hf_config(f, tuple(ignore_keys)))


def _unpermuted_rows(n_rows: int, n_heads: int) -> np.ndarray:
    """The file rows holding HF rows 0..n_rows-1. llama.cpp's converter reorders each head's rows from
    [first half, second half] to interleaved pairs, for its rotary layout; this inverts that."""
    converted = np.arange(n_rows).reshape(n_heads, 2, -1).swapaxes(1, 2).reshape(-1)  # file row -> HF row
    return np.argsort(converted)


def _hf_config(f: GGUFFile, ignore_keys: tuple[str, ...]) -> dict:
    """The HF config.json dict equivalent to the file's llama.cpp metadata."""
    arch = f.arch
    if arch not in ARCHS:
        raise ValueError(f"{f.path}: GGUF architecture {arch!r} is not supported; adl-jax reads {', '.join(ARCHS)}")
    prefix = arch + "."
    unknown = sorted(
        k for k in f.fields if k.startswith(prefix) and k[len(prefix) :] not in _KNOWN_KEYS | set(ignore_keys)
    )
    if unknown:
        raise ValueError(
            f"{f.path}: metadata {unknown} is not understood by adl-jax's GGUF reader and might change the "
            f"computation; if you know it does not, pass ignore_keys={tuple(k[len(prefix) :] for k in unknown)!r}"
        )

    def a(key, default=None):
        return f.meta(prefix + key, default)

    embed = PARAMS["embed"].gguf
    if embed not in f.tensors:
        raise ValueError(f"{f.path} has no {embed} tensor")
    hidden, heads = a("embedding_length"), a("attention.head_count")
    head_dim = a("attention.key_length") or a("rope.dimension_count") or hidden // heads
    if a("attention.value_length", head_dim) != head_dim:
        raise ValueError(f"{f.path}: value head size {a('attention.value_length')} != key head size {head_dim}")
    eos = [f.meta(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot")]
    d = dict(
        model_type=ARCHS[arch],
        vocab_size=f.shape(embed)[0],
        hidden_size=hidden,
        intermediate_size=a("feed_forward_length"),
        num_hidden_layers=a("block_count"),
        num_attention_heads=heads,
        num_key_value_heads=a("attention.head_count_kv", heads),
        head_dim=head_dim,
        rms_norm_eps=a("attention.layer_norm_rms_epsilon", 1e-6 if arch.startswith("gemma") else 1e-5),
        rope_theta=a("rope.freq_base", 10000.0),
        tie_word_embeddings=PARAMS["lm_head"].gguf not in f.tensors,
        attention_bias=arch != "qwen2" and GGUF_LAYER.format(0) + PARAMS["q_bias"].gguf in f.tensors,
        bos_token_id=f.meta("tokenizer.ggml.bos_token_id"),
        eos_token_id=list(dict.fromkeys(e for e in eos if e is not None)) or None,
        pad_token_id=f.meta("tokenizer.ggml.padding_token_id"),
    )
    scaling = a("rope.scaling.type", "none")
    if scaling != "none":
        d["rope_scaling"] = {"rope_type": scaling, "factor": a("rope.scaling.factor", 1.0)}
    if _ROPE_FREQS in f.tensors:
        factors = f.rows(_ROPE_FREQS, np.arange(f.shape(_ROPE_FREQS)[0]))
        d["rope_scaling"] = _llama3_rope(factors, d["rope_theta"], head_dim, f.path)
    pattern = a("attention.sliding_window_pattern")
    if pattern is not None:  # llama.cpp: an int n makes layer i sliding iff i % n < n - 1; or one bool per layer
        n = d["num_hidden_layers"]
        local = [i % pattern < pattern - 1 for i in range(n)] if isinstance(pattern, int) else pattern
        d["layer_types"] = ["sliding_attention" if s else "full_attention" for s in local]
    if arch.startswith("gemma"):
        d.update(
            hidden_activation="gelu_pytorch_tanh",
            sliding_window=a("attention.sliding_window"),
            query_pre_attn_scalar=_gemma_query_scalar(d),
            attn_logit_softcapping=a("attn_logit_softcapping"),
            final_logit_softcapping=a("final_logit_softcapping"),
        )
    if arch == "gemma3":
        d["rope_local_base_freq"] = 10000.0  # fixed in llama.cpp; the file does not store it
    return {k: v for k, v in d.items() if v is not None}


def _gemma_query_scalar(d: dict) -> int:
    """llama.cpp does not store Gemma's query_pre_attn_scalar; it uses head_dim, except for the 27B models
    (Gemma 2: 46 layers, Gemma 3: 62), which scale by hidden_size / num_heads, as their HF configs do."""
    is_27b = d["num_hidden_layers"] == (46 if d["model_type"] == "gemma2" else 62)
    return d["hidden_size"] // d["num_attention_heads"] if is_27b else d["head_dim"]


def _llama3_rope(factors: np.ndarray, theta: float, head_dim: int, path: Path) -> dict:
    """Recover Llama 3 rope scaling from the divisors llama.cpp stores in place of its parameters.

    Every released Llama 3.1-3.3 uses low_freq_factor 1, high_freq_factor 4 and an original context of
    8192; only `factor` varies, and it is the largest divisor. The guess is checked, not trusted.
    """
    rope = {
        "rope_type": "llama3",
        "factor": float(factors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    scaled = Rope(theta, "llama3", rope["factor"], 1.0, 4.0, 8192).inv_freq(head_dim)
    if not np.allclose(scaled, Rope(theta).inv_freq(head_dim) / factors, rtol=1e-5, atol=0):
        raise ValueError(f"{path}: {_ROPE_FREQS} does not match Llama 3 rope scaling with any factor; not supported")
    return rope
