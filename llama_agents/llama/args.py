"""ModelArgs: the shape of a Llama 3.1 Transformer, read strictly from Meta's `params.json`, plus presets.

What it does: one dataclass holding every number the model needs (sizes, norm epsilon, RoPE base and the
Llama 3.1 RoPE-scaling parameters, the longest context the RoPE table covers); `ModelArgs.from_params`
reads a `params.json` dict as Meta ships it and refuses an unknown or missing key by name;
`ModelArgs.to_params` writes it back; `PRESETS` names the real Llama 3.1 shapes and a `tiny` one for tests.

What it does not do: read files (see `checkpoint.py`), build modules (see `model.py`), or know about
Hugging Face configs (`checkpoint.py` converts those).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llama_agents.errors import CheckpointError

__all__ = ["PARAMS_KEYS", "PRESETS", "ModelArgs", "get_preset", "meta_rope_scale_factor"]

# Exactly the keys of a Llama 3.1 `params.json` as Meta ships it.
PARAMS_KEYS: tuple[str, ...] = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "ffn_dim_multiplier",
    "multiple_of",
    "norm_eps",
    "rope_theta",
    "use_scaled_rope",
)

# Meta's params.json carries no RoPE scaling factor. Llama 3.1, 3.2 11B/90B and 3.3 use 8; Llama 3.2 1B and
# 3B use 32 (their Hugging Face config.json says so, and Meta confirmed it: meta-llama/llama-models#166,
# #241; the llama-models reference hard-codes 8, which degrades those two models on long contexts). They
# are told apart by shape: (dim, n_layers, n_heads, n_kv_heads).
_ROPE_FACTOR_32_SHAPES = frozenset({(2048, 16, 32, 8), (3072, 28, 24, 8)})


def meta_rope_scale_factor(dim: int, n_layers: int, n_heads: int, n_kv_heads: int) -> float:
    """The RoPE scaling factor of the Meta model with this shape: 32 for Llama 3.2 1B/3B, else 8."""
    return 32.0 if (dim, n_layers, n_heads, n_kv_heads) in _ROPE_FACTOR_32_SHAPES else 8.0


@dataclass(frozen=True)
class ModelArgs:
    """The hyper-parameters of a Llama 3.1 Transformer.

    The first ten fields are the keys of Meta's `params.json`. The `rope_*` scaling fields default to the
    Llama 3.1 values (params.json does not carry them: `from_params` takes the factor from the shape, 32
    for Llama 3.2 1B/3B, see `meta_rope_scale_factor`; Hugging Face configs carry them in `rope_scaling`)
    and apply only when `use_scaled_rope` is true. `max_seq_len` is how many positions the RoPE table
    covers (the model's context, 128K for Llama 3.1); the KV cache is sized separately by
    `Transformer.setup_cache`.
    `hidden_dim` overrides the feed-forward width when a config gives it directly (Hugging Face
    `intermediate_size`); when None it is derived from `multiple_of` and `ffn_dim_multiplier` as Meta does.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    vocab_size: int = 128256
    ffn_dim_multiplier: float | None = 1.3
    multiple_of: int = 1024
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_scaled_rope: bool = True
    rope_scale_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_seq_len: int = 131072
    hidden_dim: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if problems:
            raise CheckpointError("invalid model args: " + "; ".join(problems))
        if self.dim % self.n_heads:
            problems.append(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        elif (self.dim // self.n_heads) % 2:
            problems.append(f"head_dim ({self.dim // self.n_heads}) must be even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.hidden_dim is not None and self.hidden_dim <= 0:
            problems.append(f"hidden_dim must be positive, got {self.hidden_dim!r}")
        if self.norm_eps <= 0 or self.rope_theta <= 0:
            problems.append("norm_eps and rope_theta must be positive")
        if self.use_scaled_rope and not (0 < self.rope_low_freq_factor < self.rope_high_freq_factor):
            problems.append("rope scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor")
        if problems:
            raise CheckpointError("invalid model args: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """The SwiGLU hidden width: `hidden_dim` if given, else Meta's rule from `4 * dim`."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def replace(self, **changes: Any) -> ModelArgs:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_params(
        cls, params: dict[str, Any], *, source: str = "params.json", **overrides: Any
    ) -> ModelArgs:
        """Build from a `params.json` dict; every key of `PARAMS_KEYS` is required and no other is allowed.

        `source` names the file in error messages; `overrides` sets fields that are not in params.json
        (e.g. `max_seq_len`).
        """
        if not isinstance(params, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(params).__name__}")
        unknown = sorted(set(params) - set(PARAMS_KEYS))
        if unknown:
            raise CheckpointError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"a Llama 3.1 params.json has exactly {', '.join(PARAMS_KEYS)}"
            )
        missing = [k for k in PARAMS_KEYS if k not in params]
        if missing:
            raise CheckpointError(f"{source}: missing key(s) {', '.join(map(repr, missing))}")
        bad_override = sorted(set(overrides) & set(PARAMS_KEYS))
        if bad_override:
            raise CheckpointError(f"{source}: {bad_override} come from the file and cannot be overridden")
        values: dict[str, Any] = dict(params)
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of"):
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, int):
                raise CheckpointError(f"{source}: {key!r} must be an integer, got {v!r}")
        for key in ("norm_eps", "rope_theta"):
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CheckpointError(f"{source}: {key!r} must be a number, got {v!r}")
            values[key] = float(v)
        v = values["ffn_dim_multiplier"]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise CheckpointError(f"{source}: 'ffn_dim_multiplier' must be a number or null, got {v!r}")
        if not isinstance(values["use_scaled_rope"], bool):
            raise CheckpointError(
                f"{source}: 'use_scaled_rope' must be true or false, got {values['use_scaled_rope']!r}"
            )
        if "rope_scale_factor" not in overrides:
            values["rope_scale_factor"] = meta_rope_scale_factor(
                values["dim"], values["n_layers"], values["n_heads"], values["n_kv_heads"]
            )
        try:
            return cls(**values, **overrides)
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from e
        except TypeError as e:
            raise CheckpointError(f"{source}: {e}") from e

    def to_params(self) -> dict[str, Any]:
        """The `params.json` dict for these args (the inverse of `from_params`)."""
        if self.hidden_dim is not None and self.hidden_dim != self.replace(hidden_dim=None).ffn_hidden_dim:
            raise CheckpointError(
                f"hidden_dim={self.hidden_dim} cannot be written to params.json: it does not follow from "
                f"multiple_of={self.multiple_of} and ffn_dim_multiplier={self.ffn_dim_multiplier}"
            )
        if self.use_scaled_rope and (
            self.rope_scale_factor,
            self.rope_low_freq_factor,
            self.rope_high_freq_factor,
            self.rope_original_max_position,
        ) != (meta_rope_scale_factor(self.dim, self.n_layers, self.n_heads, self.n_kv_heads), 1.0, 4.0, 8192):
            raise CheckpointError(
                "params.json cannot carry non-default RoPE scaling parameters (they follow from the model's "
                "shape: factor 32 for Llama 3.2 1B/3B, else 8; low 1, high 4, original context 8192); "
                "write the Hugging Face layout instead"
            )
        return {k: getattr(self, k) for k in PARAMS_KEYS}


PRESETS: dict[str, ModelArgs] = {
    "llama3.1-8b": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=1024
    ),
    "llama3.1-70b": ModelArgs(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3, multiple_of=4096
    ),
    "llama3.1-405b": ModelArgs(
        dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim_multiplier=1.2, multiple_of=4096
    ),
    # For tests: the real vocabulary (works with the Llama 3 tokenizer), GQA (4 query heads share 2 kv
    # heads), Llama 3.1 RoPE scaling on. head_dim 16 gives 8 RoPE frequencies spanning the unscaled,
    # smoothed and scaled bands. 2 layers x dim 64: about 17M parameters, almost all in the vocabulary.
    "tiny": ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim_multiplier=1.3,
        multiple_of=32,
    ),
}


def get_preset(name: str) -> ModelArgs:
    """The preset called `name`; a `UsageError` listing the names when there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CheckpointError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
