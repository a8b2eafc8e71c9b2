"""Hugging Face layout details for `checkpoint.py`: config.json <-> ModelArgs, tensor names, q/k
permutation, and tiktoken ranks from a `tokenizer.json`.

What it does: pure conversions, no file reading except `ranks_from_tokenizer_json`'s parsed dict.
HF stores q/k projections in the "rotate half" layout (each head's first half of dims pairs with its
second half); Meta pairs neighbouring dims `(2i, 2i+1)`. `hf_to_meta_qk` / `meta_to_hf_qk` permute rows
between the two, exactly inverting each other.

What it does not do: depend on `transformers` (tests use it as the peer, the package does not).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from llama_agents.errors import CheckpointError
from llama_agents.llama.args import PRESETS, ModelArgs

__all__ = [
    "args_from_hf_config",
    "hf_config_from_args",
    "hf_name_to_meta",
    "hf_to_meta_qk",
    "meta_name_to_hf",
    "meta_to_hf_qk",
    "ranks_from_tokenizer_json",
]

_LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_NAMES_BACK = {v: k for k, v in _LAYER_NAMES.items()}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_TOP_NAMES_BACK = {v: k for k, v in _TOP_NAMES.items()}
_META_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.weight")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def meta_name_to_hf(name: str) -> str:
    """`layers.3.attention.wq.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = _META_LAYER.fullmatch(name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        raise KeyError(name)
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"


def hf_name_to_meta(name: str) -> str | None:
    """The Meta name of an HF tensor name, or None when it is not a Llama weight we know."""
    if name in _TOP_NAMES_BACK:
        return _TOP_NAMES_BACK[name]
    m = _HF_LAYER.fullmatch(name)
    if m is None or m.group(2) not in _LAYER_NAMES_BACK:
        return None
    return f"layers.{m.group(1)}.{_LAYER_NAMES_BACK[m.group(2)]}.weight"


def hf_to_meta_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of an HF q/k projection (rotate-half per head) -> Meta's interleaved layout."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_to_hf_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Meta q/k projection (interleaved pairs) -> HF's rotate-half layout."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_config_from_args(args: ModelArgs, dtype: torch.dtype) -> dict[str, Any]:
    """A `config.json` for `LlamaForCausalLM` with these args (Llama 3.1 `rope_scaling` when scaled)."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "hidden_size": args.dim,
        "head_dim": args.head_dim,
        "initializer_range": 0.02,
        "intermediate_size": args.ffn_hidden_dim,
        "max_position_embeddings": args.max_seq_len,
        "mlp_bias": False,
        "num_attention_heads": args.n_heads,
        "num_hidden_layers": args.n_layers,
        "num_key_value_heads": args.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": args.norm_eps,
        "rope_scaling": None,
        "rope_theta": args.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "vocab_size": args.vocab_size,
    }
    if args.use_scaled_rope:
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": args.rope_scale_factor,
            "low_freq_factor": args.rope_low_freq_factor,
            "high_freq_factor": args.rope_high_freq_factor,
            "original_max_position_embeddings": args.rope_original_max_position,
        }
    return config


def _need(config: dict[str, Any], key: str, source: str, kind: type | tuple[type, ...]) -> Any:
    if key not in config:
        raise CheckpointError(f"{source}: missing key {key!r}")
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise CheckpointError(f"{source}: {key!r} has the wrong type: {value!r}")
    return value


def args_from_hf_config(config: dict[str, Any], *, source: str = "config.json") -> tuple[ModelArgs, bool]:
    """ModelArgs from an HF Llama `config.json` (transformers 4.x `rope_scaling` or 5.x `rope_parameters`).

    Returns `(args, tie_word_embeddings)`. Unsupported variants (biases, other activations, other RoPE
    types) raise `CheckpointError` naming the key.
    """
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: expected a JSON object")
    if config.get("model_type", "llama") != "llama":
        raise CheckpointError(f"{source}: model_type is {config['model_type']!r}, not 'llama'")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise CheckpointError(f"{source}: {key}=true is not supported (Llama 3.1 has no biases)")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {config['hidden_act']!r} is not supported (only silu)")
    dim = _need(config, "hidden_size", source, int)
    n_heads = _need(config, "num_attention_heads", source, int)
    n_kv_heads = config.get("num_key_value_heads") or n_heads
    head_dim = config.get("head_dim")
    if head_dim is not None and n_heads and head_dim * n_heads != dim:
        raise CheckpointError(f"{source}: head_dim={head_dim} is not hidden_size/num_attention_heads")
    hidden_dim = _need(config, "intermediate_size", source, int)
    rope = config.get("rope_parameters") or {}
    rope_scaling = config.get("rope_scaling") or (
        rope if rope.get("rope_type", "default") != "default" else None
    )
    rope_theta = config.get("rope_theta", rope.get("rope_theta"))
    if rope_theta is None:
        raise CheckpointError(f"{source}: missing key 'rope_theta'")
    fields: dict[str, Any] = {
        "dim": dim,
        "n_layers": _need(config, "num_hidden_layers", source, int),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "vocab_size": _need(config, "vocab_size", source, int),
        "norm_eps": float(_need(config, "rms_norm_eps", source, (int, float))),
        "rope_theta": float(rope_theta),
        "use_scaled_rope": rope_scaling is not None,
    }
    if "max_position_embeddings" in config:
        fields["max_seq_len"] = _need(config, "max_position_embeddings", source, int)
    if rope_scaling is not None:
        rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
        if rope_type != "llama3":
            raise CheckpointError(
                f"{source}: rope scaling type {rope_type!r} is not supported (only 'llama3')"
            )
        try:
            fields["rope_scale_factor"] = float(rope_scaling["factor"])
            fields["rope_low_freq_factor"] = float(rope_scaling["low_freq_factor"])
            fields["rope_high_freq_factor"] = float(rope_scaling["high_freq_factor"])
            fields["rope_original_max_position"] = int(rope_scaling["original_max_position_embeddings"])
        except KeyError as e:
            raise CheckpointError(f"{source}: rope scaling is missing {e.args[0]!r}") from e
    # Keep Meta's (multiple_of, ffn_dim_multiplier) when a preset of the same width gives this
    # intermediate_size, so the args can be written back as params.json; else pin hidden_dim.
    try:
        args = ModelArgs(**fields, hidden_dim=hidden_dim)
        for preset in PRESETS.values():
            candidate = args.replace(
                hidden_dim=None, multiple_of=preset.multiple_of, ffn_dim_multiplier=preset.ffn_dim_multiplier
            )
            if candidate.ffn_hidden_dim == hidden_dim:
                args = candidate
                break
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from e
    return args, bool(config.get("tie_word_embeddings", False))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level BPE vocabularies are written in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def ranks_from_tokenizer_json(
    data: dict[str, Any], *, source: str
) -> tuple[dict[bytes, int], dict[int, str]]:
    """tiktoken mergeable ranks from a parsed HF `tokenizer.json` (byte-level BPE).

    Returns `(ranks, added)`: ranks map token bytes to ids for the regular vocabulary (ids 0..n-1, the
    added special tokens excluded); `added` maps the added tokens' ids to their text, for the caller to
    check against the special tokens a `Tokenizer` numbers after the ranks.
    """
    try:
        model = data["model"]
        vocab: dict[str, int] = model["vocab"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source}: not a tokenizer.json with a model.vocab") from e
    if model.get("type", "BPE") != "BPE":
        raise CheckpointError(f"{source}: model type {model.get('type')!r} is not BPE")
    added = {int(t["id"]): str(t["content"]) for t in data.get("added_tokens", [])}
    added_text = set(added.values())
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, rank in vocab.items():
        if token in added_text:
            continue
        try:
            ranks[bytes(decoder[c] for c in token)] = int(rank)
        except KeyError as e:
            raise CheckpointError(
                f"{source}: token {token!r} is not byte-level BPE (character {e.args[0]!r} maps to no byte)"
            ) from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{source}: the regular vocabulary ids are not exactly 0..{len(ranks) - 1}")
    return ranks, added
