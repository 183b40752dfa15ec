"""Family adapters (showwork.model.families): a trained Gemma 2 or Gemma 3 exported as a Hugging Face
directory loads back through tunix's loader with the same logits, and config.json carries every
field the loader reads, in Hugging Face's layout."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from showwork import log as log_lib
from showwork.bus import Bus
from showwork.config import LoraConfig, OptimizerConfig, SftConfig
from showwork.model import export, families, loader, lora

from showwork.model.loaded import Loaded
from showwork.train import sft

from standins import WINDOW, gemma2_2b_shaped as tiny_gemma2, gemma3_1b_shaped as tiny_gemma3
import standins

TEXT = "Natalia sold 48 clips in April and half as many in May. How many clips in all?"
ROWS = [
    {"prompt": "How many clips did Natalia sell in April?", "target": "She sold 48 clips. <answer>48</answer>"},
    {"prompt": "Weng earns $12 an hour. How much for 50 minutes?", "target": "12 / 60 * 50 = 10. <answer>10</answer>"},
    {"prompt": "Betty needs $100 and has half. How much is missing?", "target": "100 / 2 = 50. <answer>50</answer>"},
    {"prompt": "What is 48 + 24?", "target": "48 + 24 = 72. <answer>72</answer>"},
]

STAND_INS = {"gemma2": tiny_gemma2, "gemma3": tiny_gemma3}


def logits(loaded: Loaded, ids: list[int]) -> np.ndarray:
    """Logits of every position of `ids` (one jitted forward pass: seconds faster than eager here)."""
    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def forward(state, tokens):
        n = tokens.shape[1]
        mask = jnp.tril(jnp.ones((n, n), dtype=jnp.bool_))[None]
        out, _ = nnx.merge(graphdef, state)(tokens, jnp.arange(n, dtype=jnp.int32)[None], None, mask)
        return out[0]

    return np.asarray(forward(state, jnp.asarray([ids], dtype=jnp.int32)))


def params(model: nnx.Module) -> dict[str, np.ndarray]:
    flat = nnx.state(model, nnx.Param).flat_state()
    return {".".join(map(str, path)): np.array(leaf.value if hasattr(leaf, "value") else leaf) for path, leaf in flat}


def train(loaded: Loaded, mode: str, tmp_path, ids: list[int]) -> np.ndarray:
    """A few SFT steps in place, LoRA (added, trained, merged) or full; the trained model's logits of `ids`.

    Taken before the merge: the merged model is for export only (qwix still
    routes its forward pass through the adapters the merge removed).
    """
    if mode == "lora":
        loaded.model = lora.add(loaded.model, LoraConfig(rank=4, alpha=8.0), seed=0)
    config = SftConfig(max_steps=3, max_seq_len=64, checkpoint_every=1000,
                       optimizer=OptimizerConfig(learning_rate=1e-2))
    sft.train(Bus(str(tmp_path / "bus")), loaded, ROWS, config, 2, "sft", "test", log_lib.get("test"))
    trained = logits(loaded, ids)
    if mode == "lora":
        lora.merge(loaded.model)
    return trained


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_gemma2_round_trip_after_training_gives_the_same_logits(mode, tmp_path):
    round_trip_after_training(tiny_gemma2(), mode, tmp_path)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_gemma3_round_trip_after_training_gives_the_same_logits(mode, tmp_path):
    round_trip_after_training(tiny_gemma3(), mode, tmp_path)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_gemma3_270m_from_its_gguf_round_trips_after_training(mode, tmp_path):
    """The 270M's form: a llama.cpp GGUF (norms as 1 + w, [out, in], token lists) loads to the model it was
    written from, then trains, exports as Hugging Face Gemma 3 and loads back with the same logits."""
    written = standins.gemma3_270m_shaped()
    path = standins.write_gguf(written, tmp_path / "standin.gguf")
    loaded = loader.load("gemma3-270m", str(path))
    ids = written.tokenizer.encode(TEXT, bos=True)[:20]
    assert loaded.config == written.config
    assert loaded.tokenizer.encode(TEXT + "<start_of_turn>") == written.tokenizer.encode(TEXT + "<start_of_turn>")
    assert np.abs(logits(loaded, ids) - logits(written, ids)).max() < 1e-5
    round_trip_after_training(loaded, mode, tmp_path)


def round_trip_after_training(loaded: Loaded, mode: str, tmp_path):
    """Train, export, load back: the loaded model is the trained one (same config, same logits)."""
    ids = loaded.tokenizer.encode(TEXT, bos=True)[:20]
    assert len(ids) == 20 > WINDOW
    before = params(loaded.model)
    untrained = logits(loaded, ids)
    trained = train(loaded, mode, tmp_path, ids)
    after = params(loaded.model)
    assert after.keys() == before.keys()
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    if mode == "full":
        assert changed == set(before)
    else:  # LoRA moves only the adapted projections; the merge folds them into the kernels
        projections = {n for n in before if any(t in n for t in ("einsum", "gate_proj", "up_proj", "down_proj"))}
        assert projections and changed == projections

    out = export.export_hf(loaded, tmp_path / "hf")
    back = loader.load_dir(str(out))
    assert families.for_config(back.config) is families.for_config(loaded.config)
    assert back.config == loaded.config
    assert back.tokenizer.encode(TEXT) == loaded.tokenizer.encode(TEXT)
    assert np.abs(trained - untrained).max() > 1e-3
    diff = np.abs(logits(back, ids) - trained).max()
    assert diff < 1e-5, diff


def test_gemma2_with_as_many_kv_heads_as_heads_round_trips(tmp_path):
    """num_kv_heads == num_heads: tunix fuses q, k and v into one einsum (qkv_einsum); the export splits it."""
    loaded = tiny_gemma2(kv_heads=standins.WIDTH["num_heads"])
    assert "qkv_einsum" in nnx.state(loaded.model, nnx.Param).to_pure_dict()["layers"][0]["attn"]
    back = loader.load_dir(str(export.export_hf(loaded, tmp_path / "hf")))
    ids = loaded.tokenizer.encode(TEXT, bos=True)[:20]
    assert np.abs(logits(back, ids) - logits(loaded, ids)).max() < 1e-5


def test_export_writes_every_tensor_in_hugging_face_shapes(tmp_path):
    """Names and [out, in] shapes as transformers' Gemma2ForCausalLM holds them, nothing else."""
    from safetensors.numpy import load_file

    loaded = tiny_gemma2()
    c = loaded.config
    tensors = load_file(str(export.export_hf(loaded, tmp_path / "hf") / "model.safetensors"))
    d, f, q, kv = c.embed_dim, c.hidden_dim, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    expected = {"model.embed_tokens.weight": (c.num_embed, d), "model.norm.weight": (d,)}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        expected.update({
            p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f),
            **{p + f"{norm}.weight": (d,) for norm in ("input_layernorm", "post_attention_layernorm",
                                                        "pre_feedforward_layernorm", "post_feedforward_layernorm")}})
    assert {name: t.shape for name, t in tensors.items()} == expected
    assert all(t.dtype == np.float32 for t in tensors.values())


@pytest.mark.parametrize("family, expected", [
    ("gemma2", {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "final_logit_softcapping": 30.0,
                "attn_logit_softcapping": 50.0, "sliding_window": WINDOW, "query_pre_attn_scalar": 96,
                "layer_types": ["sliding_attention", "full_attention"] * 2, "head_dim": 96, "num_hidden_layers": 4,
                "num_key_value_heads": 1, "rope_theta": 10_000.0, "tie_word_embeddings": True}),
    ("gemma3", {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "rope_theta": 500_000.0,
                "rope_local_base_freq": 20_000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                "sliding_window_pattern": 6, "query_pre_attn_scalar": 64, "sliding_window": WINDOW, "head_dim": 96,
                "layer_types": ["sliding_attention"] * 5 + ["full_attention"], "final_logit_softcapping": None,
                "tie_word_embeddings": True}),
], ids=["gemma2", "gemma3"])
def test_exported_config_json_is_the_hugging_face_layout(family, expected, tmp_path):
    loaded = STAND_INS[family]()
    written = json.loads((export.export_hf(loaded, tmp_path / "hf") / "config.json").read_text())
    assert {k: written.get(k) for k in expected} == expected
    assert written["vocab_size"] == loaded.tokenizer.vocab_size


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_transformers_reads_the_exported_config_json_as_meant(family):
    """transformers' own config class reads our config.json to the same architecture, and the
    transformers 5 layout it saves back (`rope_parameters`) reads into the same tunix config."""
    transformers = pytest.importorskip("transformers")
    loaded = STAND_INS[family]()
    adapter = families.FAMILIES[family]
    written = json.loads(json.dumps(adapter.config_json(loaded.config)))
    cls = {"gemma2": transformers.Gemma2Config, "gemma3": transformers.Gemma3TextConfig}[family]
    hf = cls(**{k: v for k, v in written.items() if k not in ("model_type", "architectures")})
    assert hf.layer_types == written["layer_types"]
    assert (hf.sliding_window, hf.query_pre_attn_scalar, hf.head_dim) == (WINDOW, written["query_pre_attn_scalar"],
                                                                          loaded.config.head_dim)
    if family == "gemma2":
        assert (hf.final_logit_softcapping, hf.attn_logit_softcapping) == (30.0, 50.0)
    else:
        assert hf.rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 500_000.0}
        assert hf.rope_parameters["sliding_attention"] == {"rope_type": "default", "rope_theta": 20_000.0}
    saved = json.loads(hf.to_json_string())
    assert adapter.config_from_hf(saved, getattr(loaded.config, "param_dtype", None)) == loaded.config


_GEMMA3 = {"model_type": "gemma3_text", "num_hidden_layers": 7, "vocab_size": 512, "hidden_size": 64,
           "intermediate_size": 128, "num_attention_heads": 2, "head_dim": 16, "num_key_value_heads": 1}
_GEMMA2 = {"model_type": "gemma2", "num_hidden_layers": 5, "vocab_size": 512, "hidden_size": 64,
           "intermediate_size": 128, "num_attention_heads": 2, "head_dim": 32, "num_key_value_heads": 1}


def _kinds(names: str):
    from tunix.models.gemma import model as gemma

    return tuple({"L": gemma.AttentionType.LOCAL_SLIDING, "G": gemma.AttentionType.GLOBAL}[c] for c in names)


def _q(name: str):
    from tunix.models.gemma3.model import QueryPreAttentionNormalisation

    return QueryPreAttentionNormalisation[name]


# (family, config.json, fields of the tunix config it must give): each row sets values
# other than the defaults, so a field the export drops or renames shows as a difference.
CONFIGS = {
    "gemma3-legacy-rope": ("gemma3", {
        **_GEMMA3, "sliding_window": 8, "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_theta": 500_000.0,
        "rope_local_base_freq": 20_000.0, "query_pre_attn_scalar": 32, "sliding_window_pattern": 6},
        {"sliding_window_size": 8, "global_scale_factor": 8.0, "global_base_frequency": 500_000,
         "local_base_frequency": 20_000, "local_scale_factor": 1.0, "num_layers": 7,
         "query_pre_attn_norm": _q("BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS")}),
    "gemma3-transformers5-rope": ("gemma3", {
        **_GEMMA3, "sliding_window": 16, "query_pre_attn_scalar": 16,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention", "sliding_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 250_000.0},
                            "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5_000.0}}},
        {"sliding_window_size": 16, "global_scale_factor": 4.0, "global_base_frequency": 250_000,
         "local_base_frequency": 5_000, "local_scale_factor": 2.0,
         "query_pre_attn_norm": _q("BY_ONE_OVER_SQRT_HEAD_DIM")}),
    "gemma2-soft-capped": ("gemma2", {
        **_GEMMA2, "sliding_window": 8, "final_logit_softcapping": 25.0, "attn_logit_softcapping": 40.0,
        "query_pre_attn_scalar": 32,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                        "full_attention"]},
        {"sliding_window_size": 8, "final_logit_softcap": 25.0, "attn_logits_soft_cap": 40.0,
         "attention_types": _kinds("LLGLG"), "num_layers": 5, "head_dim": 32}),
    "gemma2-uncapped-default-pattern": ("gemma2", {
        **_GEMMA2, "sliding_window": 12, "final_logit_softcapping": None, "attn_logit_softcapping": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0}},
        {"sliding_window_size": 12, "final_logit_softcap": None, "attn_logits_soft_cap": None,
         "attention_types": _kinds("LGLGL")}),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_field_the_loader_reads_survives_export_and_reload(name):
    family, hf, fields = CONFIGS[name]
    adapter = families.for_config_json(hf)
    assert adapter is families.FAMILIES[family]
    first = adapter.config_from_hf(hf, jnp.float32)
    assert {k: getattr(first, k) for k in fields} == fields
    written = json.loads(json.dumps(adapter.config_json(first)))
    assert families.for_config_json(written) is adapter
    again = adapter.config_from_hf(written, jnp.float32)
    assert again == first, {f.name: (getattr(first, f.name), getattr(again, f.name))
                            for f in dataclasses.fields(first) if getattr(first, f.name) != getattr(again, f.name)}


ERRORS = {
    "gemma2-query-scalar": (lambda: families.Gemma2().config_from_hf({**_GEMMA2, "query_pre_attn_scalar": 144}, None),
                            "query_pre_attn_scalar 144 differs from head_dim 32"),
    "gemma2-rope-base": (lambda: families.Gemma2().config_from_hf({**_GEMMA2, "rope_theta": 20_000.0}, None),
                         "RoPE base 20000"),
    "gemma2-layer-kind": (lambda: families.Gemma2().config_from_hf(
        {**_GEMMA2, "layer_types": ["sliding_attention"] * 4 + ["chunked_attention"]}, None), "chunked_attention"),
    "gemma2-layer-count": (lambda: families.Gemma2().config_from_hf(
        {**_GEMMA2, "layer_types": ["sliding_attention", "full_attention"]}, None), "layer_types names 2 layers"),
    "gemma3-pattern": (lambda: families.Gemma3().config_from_hf(
        {**_GEMMA3, "layer_types": ["sliding_attention", "full_attention"] * 3 + ["sliding_attention"]}, jnp.float32),
        "not tunix's fixed 5 local : 1 global"),
    "gemma3-query-scalar": (lambda: families.Gemma3().config_from_hf({**_GEMMA3, "query_pre_attn_scalar": 24},
                                                                     jnp.float32), "query_pre_attn_scalar 24"),
    "gemma3-rope-type": (lambda: families.Gemma3().config_from_hf(
        {**_GEMMA3, "rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, jnp.float32), "'yarn'"),
    "unknown-model-type": (lambda: families.for_config_json({"model_type": "llama"}),
                           "'llama'; known: gemma3_text, gemma2"),
    "unknown-model-name": (lambda: families.for_model_name("llama-7b"), "no known family \\(gemma3, gemma2\\)"),
}


@pytest.mark.parametrize("name", ERRORS)
def test_what_tunix_cannot_run_is_one_clear_error(name):
    call, words = ERRORS[name]
    with pytest.raises(ValueError, match=words):
        call()


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_export_in_the_tier_dtype_writes_bfloat16_that_loads_back(family, tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file

    loaded = STAND_INS[family]()
    out = export.export_hf(loaded, tmp_path / "bf16", dtype="bfloat16")
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = loader.load_dir(str(out))  # loaded in float32: the bfloat16 values, widened
    ids = loaded.tokenizer.encode(TEXT, bos=True)[:20]
    assert np.abs(logits(back, ids) - logits(loaded, ids)).max() < 0.05  # bfloat16 rounding, nothing else


def test_export_dtype_follows_the_recipe():
    from showwork.config import ModelConfig

    assert export.dtype_for(ModelConfig(name="tiny"), "bfloat16") == "float32"
    assert export.dtype_for(ModelConfig(name="tiny", export_dtype="tier"), "bfloat16") == "bfloat16"
    assert export.dtype_for(ModelConfig(name="tiny", export_dtype="tier"), "float32") == "float32"
