"""The `tiny` model: random weights and a 512-piece tokenizer with Gemma's ids, for tests."""

from __future__ import annotations

import contextlib
import io
import os

import jax
import jax.numpy as jnp
from flax import nnx

from showwork.model import families, meshes
from showwork.cache import cache_dir
from showwork.model.loaded import DTYPES, Loaded, with_remat
from showwork.model.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from showwork.task.prompts import END_OF_TURN, START_OF_TURN

_TINY_CORPUS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "Betty is saving money for a new wallet which costs $100. The answer is 5.",
    "Let's solve this step by step: 1. First, 48 / 2 = 24. 2. Then 48 + 24 = 72.",
    "<reasoning>She sold 48 + 24 = 72 clips.</reasoning><answer>72</answer>",
    "Therefore the total is 10,800 dollars, or 3/4 of the price, minus 5.0 percent.",
)


def tokenizer() -> Tokenizer:
    """A 512-piece BPE tokenizer with Gemma's special ids, trained on a fixed text."""
    path = cache_dir() / "tiny" / "tokenizer-v1.model"
    if not path.exists():
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_TINY_CORPUS * 20),
            model_writer=buf,
            model_type="bpe",
            vocab_size=512,
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=3,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
            user_defined_symbols=[START_OF_TURN, END_OF_TURN, "<reasoning>", "</reasoning>", "<answer>", "</answer>"],
            hard_vocab_limit=False,
            num_threads=1,
            minloglevel=2,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
    return Tokenizer.from_file(path)


def config(vocab: int, dtype=jnp.float32):
    return families.gemma3_config(
        {
            "num_layers": 2,
            "num_embed": vocab,
            "embed_dim": 64,
            "hidden_dim": 128,
            "num_heads": 2,
            "head_dim": 32,
            "num_kv_heads": 1,
            "sliding_window_size": 64,
        },
        dtype,
    )


def load(dtype: str = "float32", seed: int = 0, mesh=None, remat: bool = False) -> Loaded:
    """The tiny model as a `Loaded` (random weights from `seed`, placed on `mesh`).

    The weights are drawn in float32 and then cast, so every dtype gets the
    same model (rounded), as a real checkpoint loaded in bfloat16 is.
    """
    tok = tokenizer()
    cfg = with_remat(config(tok.vocab_size, DTYPES[dtype]), remat)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        drawn = random_gemma3(with_remat(config(tok.vocab_size, jnp.float32), remat), seed)
        model = drawn if dtype == "float32" else random_gemma3(cfg, seed)
        if model is not drawn:
            nnx.update(model, jax.tree.map(lambda x: x.astype(DTYPES[dtype]), nnx.state(drawn, nnx.Param)))
    if mesh is not None:
        meshes.shard(model, mesh)
    return Loaded(name="tiny", model=model, tokenizer=tok, config=cfg)


def random_gemma3(config, seed: int = 0, norms: bool = False) -> nnx.Module:
    """A Gemma 3 of `config` with random weights (tests, smoke runs); random norm scales too when `norms`."""
    from tunix.models.gemma3 import model as gemma3

    return _noised(gemma3.Gemma3(config, rngs=nnx.Rngs(params=seed)), seed, norms)


def random_gemma2(config, seed: int = 0, norms: bool = True) -> nnx.Module:
    """A Gemma 2 of `config` (a tunix `gemma.model.ModelConfig`) with random weights, norm scales too (tests)."""
    from tunix.models.gemma import model as gemma

    return _noised(gemma.Gemma(config, rngs=nnx.Rngs(params=seed)), seed, norms)


def _noised(model: nnx.Module, seed: int, norms: bool) -> nnx.Module:
    """`model` with noise added to every matrix weight, and to the norm scales when `norms`, in place.

    tunix initialises MLP kernels to zero; a model that ignores its MLP
    would make tests of training blind, so give every weight some noise.
    Norm scales start at zero (x * (1 + 0)), which hides a swapped norm from
    an export test; `random_gemma3` leaves them so by default, which keeps
    the tiny model's weights as they were.
    """
    key = jax.random.key(seed + 1)
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        leaf if leaf.ndim == 1 and not norms else leaf + 0.02 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, keys)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model
