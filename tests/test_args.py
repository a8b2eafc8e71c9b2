"""Tests for llama_agents.llama.args: strict params.json reading and the presets' real shapes."""

from __future__ import annotations

import pytest
from llama_models.sku_list import resolve_model

from llama_agents.errors import CheckpointError
from llama_agents.llama.args import PARAMS_KEYS, PRESETS, ModelArgs, get_preset


def _param_count(a: ModelArgs) -> int:
    hd, kv = a.head_dim, a.n_kv_heads
    per_layer = (
        a.dim * (a.n_heads * hd) * 2 + a.dim * (kv * hd) * 2 + 3 * a.dim * a.ffn_hidden_dim + 2 * a.dim
    )
    return 2 * a.vocab_size * a.dim + a.n_layers * per_layer + a.dim


@pytest.mark.parametrize(
    ("preset", "sku", "ffn", "billions"),
    [
        ("llama3.1-8b", "Llama3.1-8B", 14336, 8.03),
        ("llama3.1-70b", "Llama3.1-70B", 28672, 70.55),
        ("llama3.1-405b", "Llama3.1-405B", 53248, 405.85),
    ],
)
def test_presets_are_the_real_llama31_shapes(preset, sku, ffn, billions):
    args = PRESETS[preset]
    # The reference's arch_args are exactly Meta's params.json for that model.
    params = resolve_model(sku).arch_args
    assert ModelArgs.from_params(params) == args
    assert args.to_params() == params
    assert args.ffn_hidden_dim == ffn  # HF intermediate_size of the released models
    assert round(_param_count(args) / 1e9, 2) == billions


def test_tiny_preset_works_with_the_real_vocabulary_and_exercises_gqa_and_scaling():
    tiny = get_preset("tiny")
    assert tiny.vocab_size == 128256
    assert tiny.n_kv_heads < tiny.n_heads
    assert tiny.use_scaled_rope
    assert (tiny.rope_scale_factor, tiny.rope_low_freq_factor, tiny.rope_high_freq_factor) == (8.0, 1.0, 4.0)
    assert tiny.rope_original_max_position == 8192
    assert _param_count(tiny) < 20_000_000


def test_unknown_params_key_is_named():
    params = {**PRESETS["llama3.1-8b"].to_params(), "rope_scaling_factor": 32}
    with pytest.raises(CheckpointError, match="rope_scaling_factor") as e:
        ModelArgs.from_params(params, source="/ckpt/params.json")
    assert "/ckpt/params.json" in str(e.value)


@pytest.mark.parametrize("key", PARAMS_KEYS)
def test_each_missing_params_key_is_named(key):
    params = PRESETS["llama3.1-8b"].to_params()
    del params[key]
    with pytest.raises(CheckpointError, match=f"missing key.*'{key}'"):
        ModelArgs.from_params(params)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dim", "4096"),
        ("n_layers", 32.0),
        ("use_scaled_rope", 1),
        ("norm_eps", "1e-5"),
        ("ffn_dim_multiplier", "x"),
    ],
)
def test_wrong_types_are_named(key, value):
    params = {**PRESETS["llama3.1-8b"].to_params(), key: value}
    with pytest.raises(CheckpointError, match=key):
        ModelArgs.from_params(params)


def test_inconsistent_shapes_are_rejected():
    with pytest.raises(CheckpointError, match="divisible by n_heads"):
        ModelArgs(dim=100, n_heads=3, n_kv_heads=1)
    with pytest.raises(CheckpointError, match="multiple of n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(CheckpointError, match="n_layers"):
        ModelArgs.from_params({**PRESETS["tiny"].to_params(), "n_layers": 0})


def test_overrides_and_non_params_fields():
    args = ModelArgs.from_params(PRESETS["tiny"].to_params(), max_seq_len=256)
    assert args.max_seq_len == 256
    with pytest.raises(CheckpointError, match="cannot be overridden"):
        ModelArgs.from_params(PRESETS["tiny"].to_params(), dim=8)
    # an explicit feed-forward width that params.json could not express is refused on writing
    with pytest.raises(CheckpointError, match="hidden_dim"):
        PRESETS["tiny"].replace(hidden_dim=100).to_params()
    with pytest.raises(CheckpointError, match="RoPE scaling"):
        PRESETS["tiny"].replace(rope_original_max_position=32).to_params()
    with pytest.raises(CheckpointError, match="unknown preset 'llama2'"):
        get_preset("llama2")


@pytest.mark.parametrize(
    ("sku", "factor"),
    [
        ("Llama3.2-1B", 32.0),
        ("Llama3.2-3B-Instruct", 32.0),
        ("Llama3.1-8B-Instruct", 8.0),
        ("Llama3.3-70B-Instruct", 8.0),
    ],
)
def test_meta_params_json_gets_the_rope_factor_its_model_was_trained_with(sku, factor):
    # params.json has no RoPE factor. Llama 3.2 1B/3B were trained with 32 (their HF config.json says so;
    # the llama-models reference hard-codes 8, meta-llama/llama-models#241); the others with 8.
    params = resolve_model(sku).arch_args
    args = ModelArgs.from_params(params)
    assert args.rope_scale_factor == factor
    assert args.to_params() == params


def test_llama32_1b_params_json_and_hf_config_json_give_the_same_model():
    from llama_agents.llama._hf import args_from_hf_config

    config = {  # meta-llama/Llama-3.2-1B config.json as released
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0",
        "use_cache": True,
        "vocab_size": 128256,
    }
    hf, tied = args_from_hf_config(config)
    meta = ModelArgs.from_params(resolve_model("Llama3.2-1B").arch_args)
    assert tied
    assert hf.ffn_hidden_dim == meta.ffn_hidden_dim == 8192
    assert hf.replace(multiple_of=meta.multiple_of, ffn_dim_multiplier=meta.ffn_dim_multiplier) == meta
