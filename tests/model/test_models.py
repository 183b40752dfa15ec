"""showwork.model: the real Gemma 3 270M (golden values), tokenizer, tiny model, LoRA, meshes, safetensors."""

import json
import random
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from showwork.model import export, families, loader, lora, meshes, tiny as tiny_model

# Hugging Face transformers reading the same GGUF in float32 (ARCHITECTURE.md).
GOLDEN = {"▁the": -1.654, "▁a": -2.198, "▁Paris": -2.477, "▁one": -2.632}


def forward(loaded, ids):
    tokens = jnp.asarray([ids], dtype=jnp.int32)
    positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
    mask = jnp.tril(jnp.ones((len(ids), len(ids)), dtype=jnp.bool_))[None]
    logits, _ = loaded.model(tokens, positions, None, mask)
    return np.asarray(logits[0])


@pytest.mark.slow
def test_golden_next_token_logprobs(gemma270m):
    ids = gemma270m.tokenizer.encode("The capital of France is", bos=True)
    logits = forward(gemma270m, ids)[-1].astype(np.float64)
    logprobs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    top = [gemma270m.tokenizer.piece(i) for i in np.argsort(-logprobs)[:4]]
    assert top == list(GOLDEN)
    for piece, expected in GOLDEN.items():
        got = logprobs[gemma270m.tokenizer.sp.piece_to_id(piece)]
        assert abs(got - expected) < 0.01, (piece, got, expected)


@pytest.mark.slow
def test_greedy_generation_is_fluent(gemma270m):
    from tunix.generate import sampler as sampler_lib

    c = gemma270m.config
    sampler = sampler_lib.Sampler(gemma270m.model, gemma270m.tokenizer.sp, sampler_lib.CacheConfig(
        cache_size=64, num_layers=c.num_layers, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim))
    prompt = "The capital of France is"
    out = sampler([prompt], max_generation_steps=16, temperature=0.0)
    text, tokens = out.text[0], out.tokens[0]
    assert len(tokens) == 16
    assert prompt not in text
    words = text.split()
    assert len(words) >= 8 and len(set(words)) >= 6, text
    assert sum(ch.isalpha() or ch.isspace() for ch in text) / len(text) > 0.85, text
    assert "France" in text or "Paris" in text, text


@pytest.mark.slow
def test_tokenizer_ids_and_chat_markers(gemma270m):
    tok = gemma270m.tokenizer
    assert (tok.sp.bos_id(), tok.sp.eos_id(), tok.sp.pad_id()) == (2, 1, 0)
    assert tok.vocab_size == 262144
    assert tok.encode("<start_of_turn>") == [105]
    assert tok.encode("<end_of_turn>") == [106]
    ids = tok.encode("<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", bos=True)
    assert ids[:2] == [2, 105] and ids.count(105) == 2 and ids.count(106) == 1


ROUND_TRIP = [
    "Natalia sold 48/2 = 24 clips.\n#### 72",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\n",
    "unicode: café, naïve, 東京, ١٢٣, 🙂🚀",
    "<reasoning>x</reasoning><answer>5</answer>",
    "$1,200.50 — 10,800 — 3/4 — 1e-9",
    "\x00\x01 control chars \x7f",
    "",
]


@pytest.mark.slow
@pytest.mark.parametrize("text", ROUND_TRIP)
def test_tokenizer_round_trips_exactly(gemma270m, text):
    tok = gemma270m.tokenizer
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.slow
def test_tokenizer_round_trips_random_text(gemma270m):
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 127)] + list("\n\t éü東🙂٣") + ["<start_of_turn>", "<end_of_turn>"]
    tok = gemma270m.tokenizer
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert tok.decode(tok.encode(text)) == text


def test_tiny_tokenizer_matches_gemma_conventions(tiny):
    tok = tiny.tokenizer
    assert (tok.sp.bos_id(), tok.sp.eos_id(), tok.sp.pad_id()) == (2, 1, 0)
    assert len(tok.encode("<start_of_turn>")) == 1 and len(tok.encode("<end_of_turn>")) == 1
    for text in ROUND_TRIP:
        assert tok.decode(tok.encode(text)) == text


def test_tiny_model_forward_is_causal(tiny):
    ids = tiny.tokenizer.encode("Tom has 3 apples and buys 5 more.", bos=True)
    logits = forward(tiny, ids)
    assert logits.shape == (len(ids), tiny.tokenizer.vocab_size)
    assert np.isfinite(logits).all() and logits.std() > 0
    prefix = forward(tiny, ids[:5])
    np.testing.assert_allclose(prefix, logits[:5], rtol=1e-5, atol=1e-5)  # later tokens do not leak back


def test_tiny_is_deterministic_by_seed():
    a, b, c = tiny_model.load(seed=1), tiny_model.load(seed=1), tiny_model.load(seed=2)
    ids = a.tokenizer.encode("x + y", bos=True)
    np.testing.assert_array_equal(forward(a, ids), forward(b, ids))
    assert not np.allclose(forward(a, ids), forward(c, ids))


def test_lora_starts_equal_to_base_and_adds_few_params():
    base = tiny_model.load(seed=3)
    ids = base.tokenizer.encode("48 + 24 = 72", bos=True)
    before = forward(base, ids)
    n_base = sum(x.size for x in jax.tree.leaves(nnx.state(base.model, nnx.Param)))
    lora_model = lora.apply(base.model, rank=4, alpha=8.0)
    lora_state = nnx.state(lora_model, nnx.LoRAParam)
    n_lora = sum(x.size for x in jax.tree.leaves(lora_state))
    assert 0 < n_lora < n_base / 5
    paths = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(lora_state.to_pure_dict())[0]}
    assert any("q_einsum" in p for p in paths) and any("down_proj" in p for p in paths)
    after = forward(loader.Loaded("tiny", lora_model, base.tokenizer, base.config), ids)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # Equal because B is zero; A is the host draw (off a mesh too), or no gradient would ever reach B.
    flat = dict(nnx.to_flat_state(lora_state))
    a_paths = {p: (v.get_value().shape, v.get_value().dtype) for p, v in flat.items() if str(p[-1]).endswith("_lora_a")}
    drawn = lora.draw_a(a_paths, 0)
    assert len(a_paths) == len(flat) // 2
    for path in a_paths:
        np.testing.assert_array_equal(np.asarray(flat[path].get_value()), drawn[path])
        assert np.asarray(drawn[path]).any()


@pytest.mark.parametrize("shape, dtype", [((640, 8), "float32"), ((8, 1024), "bfloat16"), ((2304, 4, 16), "float32"),
                                          ((64, 3), "bfloat16")])
def test_adapter_a_is_he_uniform_from_its_own_seeded_generator(shape, dtype):
    """draw_a draws A as qwix's default initializer does (He uniform: uniform in ±sqrt(6 / fan_in),
    fan_in all but the last dimension), identically on every call with the seed, independently per path."""
    shapes = {("layers", 0, "attn", "q_einsum", "w_lora_a"): (shape, dtype),
              ("layers", 1, "attn", "q_einsum", "w_lora_a"): (shape, dtype)}
    first, again, other = lora.draw_a(shapes, 7), lora.draw_a(shapes, 7), lora.draw_a(shapes, 8)
    a, b = first.values()
    assert a.shape == shape and a.dtype == jnp.dtype(dtype)
    for path in shapes:
        np.testing.assert_array_equal(first[path], again[path])
        assert not np.array_equal(first[path], other[path])
    assert not np.array_equal(a, b)
    import qwix

    bound = np.sqrt(6.0 / np.prod(shape[:-1]))
    qwix_default = qwix.LoraRule.__dataclass_fields__["lora_a_initializer"].default
    theirs = np.asarray(qwix_default(jax.random.key(0), shape, jnp.float32))
    ours = np.asarray(a, np.float32)
    assert np.abs(ours).max() <= bound * 1.01 and np.abs(theirs).max() <= bound * 1.01
    assert np.abs(ours).max() > bound * 0.9 and np.abs(theirs).max() > bound * 0.9
    assert ours.std() == pytest.approx(theirs.std(), rel=0.15) and abs(ours.mean()) < bound / 5


@pytest.mark.slow
def test_adding_adapters_to_the_real_270m_takes_seconds_not_half_a_minute():
    """qwix's eager pass on the 270M compiled 137 programs (about 12 s); compiled whole and naively, 20 s of
    XLA for the forward and 108 threefry draws, plus 13 s tracing as jax described, for every getattr of a
    traced weight's sharding, where the tracer came from. Now the pass is one small program (beside a few
    scalar ones: the seed, the RNG state) and A is drawn on the host."""
    import time

    from showwork import xla_cache
    from showwork.config import LoraConfig

    xla_cache.enable()
    loaded = loader.load("gemma3-270m")
    before, started = xla_cache.counts(), time.perf_counter()
    model = lora.add(loaded.model, LoraConfig(8, 16.0), seed=3)
    seconds = time.perf_counter() - started
    spent = xla_cache.counts()
    adapters = jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
    assert len(adapters) == 2 * 18 * 6  # A and B for the q, kv, output, gate, up and down projections of 18 layers
    assert spent.requested - before.requested <= 16 and spent.seconds - before.seconds < 5, (spent, before)
    assert seconds < 15, seconds


def test_mesh_from_tier_and_clear_error_when_too_big():
    mesh = meshes.make_mesh((1, 1), ("fsdp", "tp"))
    assert mesh.shape == {"fsdp": 1, "tp": 1}
    with pytest.raises(ValueError, match="needs 64 devices, only"):
        meshes.make_mesh((8, 8), ("fsdp", "tp"))
    with pytest.raises(ValueError, match="differ in length"):
        meshes.make_mesh((1,), ("fsdp", "tp"))


def test_tiny_model_under_a_mesh():
    mesh = meshes.make_mesh((1, 1), ("fsdp", "tp"))
    loaded = tiny_model.load(mesh=mesh)
    assert np.isfinite(forward(loaded, [2, 10, 11])).all()


def test_gemma3_safetensors_export_loads_back_identically(tmp_path, tiny):
    out = export.export_hf(tiny, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["num_hidden_layers"] == 2
    loaded = loader.load("gemma3-1b-it", path=str(out))
    ids = tiny.tokenizer.encode("Weng earns $12 an hour.", bos=True)
    np.testing.assert_allclose(forward(loaded, ids), forward(tiny, ids), rtol=1e-5, atol=1e-5)


def test_gemma2_safetensors_checkpoint_maps_every_tensor(tmp_path, tiny):
    from safetensors.numpy import save_file

    d, f, n, k, h, layers, vocab = 32, 64, 2, 1, 16, 2, tiny.tokenizer.vocab_size
    rng = np.random.default_rng(0)
    t = lambda *shape: rng.normal(0, 0.05, shape).astype(np.float32)  # noqa: E731
    tensors = {"model.embed_tokens.weight": t(vocab, d), "model.norm.weight": t(d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": t(n * h, d), p + "self_attn.k_proj.weight": t(k * h, d),
            p + "self_attn.v_proj.weight": t(k * h, d), p + "self_attn.o_proj.weight": t(d, n * h),
            p + "mlp.gate_proj.weight": t(f, d), p + "mlp.up_proj.weight": t(f, d), p + "mlp.down_proj.weight": t(d, f),
            p + "input_layernorm.weight": t(d), p + "post_attention_layernorm.weight": t(d),
            p + "pre_feedforward_layernorm.weight": t(d), p + "post_feedforward_layernorm.weight": t(d),
        })
    directory = tmp_path / "gemma2"
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "tokenizer.model").write_bytes(tiny.tokenizer.sp.serialized_model_proto())
    (directory / "config.json").write_text(json.dumps({
        "model_type": "gemma2", "num_hidden_layers": layers, "vocab_size": vocab, "hidden_size": d,
        "intermediate_size": f, "num_attention_heads": n, "num_key_value_heads": k, "head_dim": h,
        "sliding_window": 16, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}))
    loaded = loader.load("gemma2-2b-it", path=str(directory))
    state = nnx.state(loaded.model, nnx.Param).to_pure_dict()
    np.testing.assert_array_equal(np.asarray(state["embedder"]["input_embedding"]), tensors["model.embed_tokens.weight"])
    np.testing.assert_array_equal(np.asarray(state["layers"][1]["mlp"]["down_proj"]["kernel"]),
                                  tensors["model.layers.1.mlp.down_proj.weight"].T)
    q = np.asarray(state["layers"][0]["attn"]["q_einsum"]["w"])  # (N, D, H)
    np.testing.assert_array_equal(q[1], tensors["model.layers.0.self_attn.q_proj.weight"][h:2 * h].T)
    logits = forward(loaded, [2, 5, 9, 11])
    assert np.isfinite(logits).all() and np.abs(logits).max() <= 30.0 + 1e-4  # final soft-cap applied


@pytest.mark.parametrize("name, path, error, words", [
    ("gemma3-1b-it", None, ValueError, "needs model.path"),
    ("gemma3-1b-it", "/no/such/dir", FileNotFoundError, "not found: /no/such/dir"),
    ("gemma3-270m", "/no/such/model.gguf", FileNotFoundError, "not found at /no/such/model.gguf"),
    ("llama-7b", None, ValueError, "unknown model"),
])
def test_missing_weights_are_one_clear_error(name, path, error, words):
    with pytest.raises(error, match=words):
        loader.load(name, path=path)


def test_directory_without_safetensors(tmp_path, tiny):
    (tmp_path / "config.json").write_text(json.dumps(families.for_config(tiny.config).config_json(tiny.config)))
    (tmp_path / "tokenizer.model").write_bytes(tiny.tokenizer.sp.serialized_model_proto())
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors files"):
        loader.load("gemma3-1b-pt", path=str(tmp_path))


@pytest.mark.parametrize("name", ["gemma3-270m", "gemma3-1b-it", "gemma3-1b-pt", "tiny"])
def test_any_gemma3_name_loads_an_exported_directory(tmp_path, tiny, name):
    """eval-only.yaml points model.path at an SFT export with any name (gemma3-270m used to fail with
    IsADirectoryError): the directory loads, with the recipe's name and the same logits."""
    export.export_hf(tiny, tmp_path / "hf")
    loaded = loader.load(name, path=str(tmp_path / "hf"))
    assert loaded.name == name
    ids = tiny.tokenizer.encode("Natalia sold clips", bos=True)
    np.testing.assert_allclose(forward(loaded, ids), forward(tiny, ids), atol=1e-5)


def test_a_name_of_another_family_loads_the_weights_family_with_a_warning(tmp_path, tiny, capsys):
    from showwork import log

    log.configure(json_lines=True)
    export.export_hf(tiny, tmp_path / "hf")
    capsys.readouterr()
    loaded = loader.load("gemma2-2b-it", path=str(tmp_path / "hf"))
    assert families.for_config(loaded.config) is families.FAMILIES["gemma3"]
    warnings = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "different families" in line]
    assert len(warnings) == 1 and warnings[0]["family"] == "gemma3_text" and warnings[0]["level"] == "warning"


def test_remat_on_cpu_warns_that_it_saves_little_and_names_the_settings_that_do(capsys):
    from showwork import log

    log.configure(json_lines=True)
    capsys.readouterr()
    loader.load("tiny", remat=False)
    assert "tier.remat" not in capsys.readouterr().err
    loader.load("tiny", remat=True)
    (warning,) = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "tier.remat" in line]
    assert warning["level"] == "warning"
    assert "sft.gradient_accumulation" in warning["event"] and "grpo.micro_batch" in warning["event"]


@pytest.mark.slow
def test_a_gguf_loads_under_any_gemma3_name():
    from showwork.model import gguf

    a = loader.load("gemma3-1b-it", path=str(gguf.default_gguf_path()))
    b = loader.load("gemma3-270m")
    ids = b.tokenizer.encode("The capital of France is", bos=True)
    np.testing.assert_allclose(forward(a, ids)[-1], forward(b, ids)[-1], atol=1e-5)


def test_a_gs_model_is_staged_once_and_an_escaping_object_name_is_refused(gcs_server, tmp_path, monkeypatch, tiny):
    """Models on gs:// are copied into the cache (one staging path for every stage); an object name
    with `..` would write outside the cache directory and is refused before anything is written."""
    import uuid

    from showwork.bus import Bus
    from showwork.errors import RunError
    from showwork import cache

    monkeypatch.setenv("SHOWWORK_CACHE", str(tmp_path / "cache"))
    export.export_hf(tiny, tmp_path / "hf")
    uri = f"gs://showwork-test/models/{uuid.uuid4().hex[:8]}"
    bus = Bus(uri)
    for path in (tmp_path / "hf").iterdir():
        bus.put_file(path.name, path)
    staged = cache.local_dir(uri)
    assert sorted(p.name for p in Path(staged).iterdir()) == sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert cache.local_dir(uri) == staged  # staged once
    ids = tiny.tokenizer.encode("Natalia sold clips", bos=True)
    np.testing.assert_allclose(forward(loader.load("tiny", path=uri), ids), forward(tiny, ids), atol=1e-5)

    evil = Bus(f"gs://showwork-test/models/{uuid.uuid4().hex[:8]}")
    evil.write_bytes("config.json", b"{}")
    evil.write_bytes("escape.txt", b"owned")
    # Real GCS keeps an object named `sub/../../escape.txt` as it is; the emulator normalizes names on
    # upload, so the listing is where the name is planted.
    listed = Bus.list
    monkeypatch.setattr(Bus, "list", lambda self, prefix="": [k.replace("escape.txt", "sub/../../escape.txt")
                                                              for k in listed(self, prefix)])
    with pytest.raises(RunError, match="would leave the cache directory"):
        cache.local_dir(evil.root)
    assert not list((tmp_path / "cache").rglob("escape.txt")) and not (tmp_path / "escape.txt").exists()
