"""Choosing the next token from logits: pure functions, randomness only from a passed `torch.Generator`.

What it does: temperature scaling, nucleus (top-p) filtering, multinomial sampling, greedy argmax
(temperature 0), and the log-probabilities of chosen tokens. What it does not do: hold any state,
touch the global RNG when a generator is given, or know about models, caches or tokenizers.
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError

__all__ = ["check_sampling_params", "sample_next_token", "sample_top_p", "token_logprobs"]

# Temperatures below this are sampled at this one: float32 logits divided by a smaller (allowed, positive)
# temperature such as 1e-39 overflow to inf and the softmax to NaN. At 1e-30 the draw is already greedy
# for any logits a model produces, so nothing but the crash changes.
_MIN_TEMPERATURE = 1e-30


def check_sampling_params(temperature: float, top_p: float) -> None:
    """Raise `UsageError` unless `temperature >= 0` and `0 < top_p <= 1` (both finite)."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise UsageError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {top_p!r}")


def sample_top_p(probs: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Nucleus sampling: draw from the smallest set of most likely tokens whose mass reaches `p`.

    probs: `[B, V]` probabilities (rows sum to 1). Returns `[B, 1]` token ids. The token that crosses
    the threshold is kept, so at least one token always survives; the kept mass is renormalised.
    Does not modify `probs`.
    """
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(probs_sort, dim=-1)
    # Drop a token when the mass strictly before it already exceeds p.
    probs_sort = probs_sort.masked_fill(cumulative - probs_sort > p, 0.0)
    probs_sort = probs_sort / probs_sort.sum(dim=-1, keepdim=True)
    if generator is not None and generator.device.type != probs_sort.device.type:
        # A CPU generator with CUDA logits (or the reverse): draw where the generator lives.
        choice = torch.multinomial(probs_sort.to(generator.device), 1, generator=generator)
        choice = choice.to(probs_sort.device)
    else:
        choice = torch.multinomial(probs_sort, num_samples=1, generator=generator)
    return torch.gather(probs_idx, -1, choice)


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of `logits` (`[B, V]`); returns a `[B]` long tensor.

    `temperature == 0` is greedy (argmax, no randomness used). Otherwise the logits are divided by
    `temperature`, softmaxed in float32 and sampled with top-p. Seeding `generator` makes the draw
    reproducible; on another device than `logits` (a CPU generator for CUDA logits), the draw is
    made on the generator's device.
    """
    assert logits.dim() == 2, f"expected [B, V] logits, got shape {tuple(logits.shape)}"
    check_sampling_params(temperature, top_p)
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / max(float(temperature), _MIN_TEMPERATURE), dim=-1)
    return sample_top_p(probs, top_p, generator).reshape(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each of `tokens` under the (untempered) distribution `logits`.

    logits: `[..., V]`, tokens: `[...]` long. Returns float32 `[...]`. These are the model's own
    log-probabilities, independent of the temperature and top-p used to sample.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)
