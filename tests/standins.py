"""Tiny stand-ins of every model family we ship, written in the form users give them.

Each is a random tunix model of its family's structure (the quirks that
change the maths: QK norm or not, soft-capping, the local/global layer
pattern, RoPE bases, query scaling) at a few million parameters (width 256,
MLP 1536, four query heads of 96: about 3M at two layers, 9M at six; the
recipe matrix runs them NARROW), written to disk so the real loaders run on it:

* `gemma3-270m`: a `.gguf` written with `gguf.GGUFWriter` the way llama.cpp
  writes Gemma 3 (norms stored as 1 + w, `[out, in]` matrices, the
  vocabulary as token lists with Gemma's chat markers as control tokens),
  so our dequantisation, norm offset and vocabulary-to-tokenizer step run.
* `gemma3-1b-it` (and `-pt`): a Hugging Face directory of a Gemma 3 with
  1B's query scaling and six layers (five local, one global).
* `gemma2-2b-it`: a Hugging Face directory of a Gemma 2 (no QK norm, final
  and attention-logit soft-capping, alternating local and global layers).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from showwork.model import export, families, tiny
from showwork.model.loaded import Loaded

WINDOW = 8  # sliding window: shorter than any prompt, so local and global layers differ
# Width shared by the stand-ins: wide enough that matmuls have a real shape (several heads, an MLP six
# times the width), narrow enough that a recipe's whole path stays a matter of seconds on CPU.
# Heads × head_dim exceeds the width, as in every Gemma 3 (and differs from it, so 1B's query scaling,
# by width / heads, is not head_dim's).
WIDTH = {"embed_dim": 256, "hidden_dim": 1536, "num_heads": 4, "head_dim": 96}
# The recipe matrix's width (about 0.2M parameters at two layers): its cells prove a recipe's path (dtype,
# mesh, stages, hosts), and a multi-host cell moves every weight between processes over localhost
# several times a step, which made the v5e-16 cell's SFT several times slower at WIDTH.
NARROW = {"embed_dim": 64, "hidden_dim": 128, "num_heads": 2, "head_dim": 48}


def gemma2_2b_shaped(seed: int = 0, kv_heads: int = 1, layers: int = 4, width: dict = WIDTH) -> Loaded:
    """A Gemma 2 stand-in: soft-capping, alternating local/global layers, a short window."""
    from tunix.models.gemma import model as gemma

    tok = tiny.tokenizer()
    local, full = gemma.AttentionType.LOCAL_SLIDING, gemma.AttentionType.GLOBAL
    config = gemma.ModelConfig(
        num_layers=layers, num_embed=tok.vocab_size, **width, num_kv_heads=kv_heads,
        final_logit_softcap=30.0, attn_logits_soft_cap=50.0,
        use_post_attn_norm=True, use_post_ffw_norm=True, attention_types=((local, full) * layers)[:layers],
        sliding_window_size=WINDOW)
    return Loaded(name="gemma2-2b-it", model=tiny.random_gemma2(config, seed), tokenizer=tok, config=config)


def gemma3_1b_shaped(seed: int = 0, layers: int = 6, width: dict = WIDTH) -> Loaded:
    """A Gemma 3 stand-in with six layers (five local, one global), non-default RoPE and 1B's query
    scaling (hidden / heads, not head_dim), a short window and random norm scales, so that every field
    config.json carries changes the logits."""
    from tunix.models.gemma3 import model as gemma3

    tok = tiny.tokenizer()
    config = dataclasses.replace(
        tiny.config(tok.vocab_size), num_layers=layers, **width, sliding_window_size=WINDOW,
        local_base_frequency=20_000, global_base_frequency=500_000, global_scale_factor=8.0,
        query_pre_attn_norm=gemma3.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS)
    return Loaded(name="gemma3-1b-it", model=tiny.random_gemma3(config, seed, norms=True), tokenizer=tok,
                  config=config)


def gemma3_270m_shaped(seed: int = 0, layers: int = 6, width: dict = WIDTH) -> Loaded:
    """A Gemma 3 with what the 270M GGUF records (and nothing it does not: RoPE and query
    scaling are the loader's defaults), six layers so the global one is there."""
    tok = tiny.tokenizer()
    hparams = {"num_layers": layers, "num_embed": tok.vocab_size, **width, "num_kv_heads": 1,
               "sliding_window_size": WINDOW}
    config = families.gemma3_config(hparams, np.float32)
    return Loaded(name="gemma3-270m", model=tiny.random_gemma3(config, seed, norms=True), tokenizer=tok,
                  config=config)


def write_hf_dir(loaded: Loaded, directory: Path) -> Path:
    """The stand-in as a Hugging Face directory (config.json, model.safetensors, tokenizer.model)."""
    return export.export_hf(loaded, Path(directory))


# Hugging Face tensor name (after "model.layers.N.") -> llama.cpp's GGUF name (after "blk.N.").
_GGUF_LAYER = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}
_GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
_CONTROL = 3  # GGUF/SentencePiece token type; llama.cpp marks Gemma's chat markers so


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER[rest]}"


def write_gguf(loaded: Loaded, path: Path) -> Path:
    """`loaded` (a Gemma 3) as a llama.cpp-style GGUF file, float32 tensors."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb

    config, sp = loaded.config, loaded.tokenizer.sp
    writer = gguf.GGUFWriter(str(path), arch="gemma3")
    writer.add_block_count(config.num_layers)
    writer.add_embedding_length(config.embed_dim)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_sliding_window(config.sliding_window_size)
    proto = pb.ModelProto.FromString(sp.serialized_model_proto())
    writer.add_tokenizer_model("llama")
    writer.add_token_list([p.piece.encode() for p in proto.pieces])
    writer.add_token_scores([p.score for p in proto.pieces])
    writer.add_token_types([_CONTROL if p.piece in ("<start_of_turn>", "<end_of_turn>") else int(p.type)
                            for p in proto.pieces])
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_pad_token_id(sp.pad_id())
    writer.add_add_space_prefix(False)
    for name, tensor in families.for_config(config).hf_tensors(loaded.model, config).items():
        values = tensor.astype(np.float32)
        if name.endswith("norm.weight"):
            values = values + 1.0  # llama.cpp stores Gemma's RMSNorm scale as 1 + w
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


# Model name -> (stand-in builder, weight form the recipe's users give it).
STAND_INS = {
    "gemma3-270m": (gemma3_270m_shaped, "gguf"),
    "gemma3-1b-it": (gemma3_1b_shaped, "hf"),
    "gemma3-1b-pt": (gemma3_1b_shaped, "hf"),
    "gemma2-2b-it": (gemma2_2b_shaped, "hf"),
}


def write(name: str, directory: Path, seed: int = 0, loaded: Loaded | None = None, layers: int | None = None,
          width: dict = WIDTH) -> Path:
    """Write model `name`'s stand-in (or `loaded`, one built from it) under `directory` in its users'
    form; returns what model.path takes. `layers` shortens it (compile time), at the cost of the
    layer pattern's later layers; `width` narrows it."""
    build, form = STAND_INS[name]
    if loaded is None:
        loaded = build(seed, layers=layers, width=width) if layers else build(seed, width=width)
    directory.mkdir(parents=True, exist_ok=True)
    if form == "gguf":
        return write_gguf(loaded, directory / f"{name}-standin.gguf")
    return write_hf_dir(loaded, directory / f"{name}-standin")
