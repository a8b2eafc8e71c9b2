"""Export one of our Llama 3.x checkpoints to a GGUF file that llama.cpp (and llama-cpp-python) can serve.

    python tools/export_gguf.py /tmp/tiny /tmp/tiny.gguf --dtype float32

What it writes (architecture `llama`, the layout llama.cpp's own `convert_hf_to_gguf.py` produces):

- `llama.*` hyper-parameters: context length, embedding length, block count, feed-forward length,
  head counts, RMS-norm epsilon, RoPE base and dimension count, vocabulary size.
- Llama 3.1 RoPE scaling as llama.cpp expects it: no `rope.scaling.*` keys but a `rope_freqs.weight`
  tensor of per-frequency divisors (1 for the high-frequency band, `factor` for the low one, the
  smoothed value in between), computed as `LlamaModel.generate_extra_tensors` does.
- Tensors `token_embd`, `blk.N.{attn_norm,attn_q,attn_k,attn_v,attn_output,ffn_norm,ffn_gate,ffn_up,
  ffn_down}`, `output_norm`, `output`, in F32 or F16 (norms and `rope_freqs` always F32). q/k stay in
  Meta's interleaved layout: it is the one llama.cpp's "normal" RoPE uses (`convert_hf_to_gguf.py`
  permutes Hugging Face's rotate-half q/k back to it).
- The Llama 3 tokenizer: `tokenizer.ggml.model = gpt2`, `pre = llama-bpe`, the tokens in GPT-2's
  byte-level-unicode spelling, token types (the 256 special tokens CONTROL), the BPE merges recovered
  from the tiktoken ranks, and the bos / eos / eot / eom ids (`add_bos_token` true).

What it does not do: quantize (use llama.cpp's `llama-quantize` on the F16 file), or export models that
are not Llama 3 (a tokenizer that is not the 128256-token Llama 3 one).

`gguf` (llama.cpp's gguf-py, PyPI `gguf`) must be installed: `pip install -e ".[engine-tests]"`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from llama_agents.errors import CheckpointError, UsageError
from llama_agents.llama._hf import _bytes_to_unicode
from llama_agents.llama.args import ModelArgs
from llama_agents.llama.checkpoint import load_model
from llama_agents.llama.tokenizer import Tokenizer

__all__ = ["bpe_merges", "export_gguf", "gguf_tokens", "llama3_rope_freq_factors", "main"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_LAYER_NAMES = {
    "attention_norm": "attn_norm",
    "attention.wq": "attn_q",
    "attention.wk": "attn_k",
    "attention.wv": "attn_v",
    "attention.wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "feed_forward.w1": "ffn_gate",
    "feed_forward.w3": "ffn_up",
    "feed_forward.w2": "ffn_down",
}
_TOP_NAMES = {"tok_embeddings.weight": "token_embd", "norm.weight": "output_norm", "output.weight": "output"}


def gguf_tensor_name(meta_name: str) -> str:
    """`layers.3.attention.wq.weight` -> `blk.3.attn_q.weight` (Meta names to llama.cpp's)."""
    if meta_name in _TOP_NAMES:
        return _TOP_NAMES[meta_name] + ".weight"
    parts = meta_name.split(".")
    if len(parts) >= 4 and parts[0] == "layers" and parts[-1] == "weight":
        inner = ".".join(parts[2:-1])
        if inner in _LAYER_NAMES:
            return f"blk.{parts[1]}.{_LAYER_NAMES[inner]}.weight"
    raise CheckpointError(f"tensor {meta_name!r} has no GGUF name (not a Llama weight)")


def llama3_rope_freq_factors(args: ModelArgs) -> np.ndarray:
    """llama.cpp's `rope_freqs` for Llama 3.1 RoPE scaling: one divisor per rotary frequency.

    llama.cpp divides each frequency `theta_i = base ** (-2i / head_dim)` by the factor; these are the
    factors that turn it into Llama 3.1's scaled frequency (wavelengths shorter than
    `original / high_freq_factor` kept, longer than `original / low_freq_factor` divided by `factor`,
    smoothly interpolated between).
    """
    dim = args.head_dim
    factor = args.rope_scale_factor
    low, high = args.rope_low_freq_factor, args.rope_high_freq_factor
    original = args.rope_original_max_position
    low_wavelen, high_wavelen = original / low, original / high
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1.0 / ((1.0 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Byte-pair-encode `token` using only merges ranked below `max_rank`."""
    parts = [bytes([b]) for b in token]
    while True:
        best: int | None = None
        best_rank = max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            return parts
        parts[best : best + 2] = [parts[best] + parts[best + 1]]


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list, in rank order, that tiktoken `ranks` imply.

    Each multi-byte token of rank r is the merge of the two pieces that byte-pair encoding with the
    merges ranked below r leaves of it (the standard recovery for tiktoken vocabularies). A token that
    encoding leaves in more than two pieces is unreachable (tiktoken never emits it for any text) and
    gets no merge.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        # else: byte-pair encoding never reaches this token from its bytes (Llama 3 has a few such
        # tokens, e.g. b".:.:"): tiktoken never produces it from text, so no merge may produce it.
    return merges


def gguf_tokens(tokenizer: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """`(tokens, token_types, merges)` of a Llama 3 tokenizer in GGUF's gpt2 form (byte-level unicode)."""
    from gguf import TokenType

    ranks: dict[bytes, int] = tokenizer._model._mergeable_ranks  # tiktoken's ranks, as loaded
    n_regular = len(ranks)
    if sorted(ranks.values()) != list(range(n_regular)):
        raise CheckpointError("the tokenizer's regular ids are not exactly 0..n-1")
    to_unicode = _bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    tokens = [""] * tokenizer.n_words
    types = [int(TokenType.NORMAL)] * tokenizer.n_words
    for b, rank in ranks.items():
        tokens[rank] = spell(b)
    for text, i in tokenizer.special_tokens.items():
        if i < n_regular or i >= tokenizer.n_words:
            raise CheckpointError(
                f"special token {text!r} has id {i}, outside {n_regular}..{tokenizer.n_words}"
            )
        tokens[i] = text
        types[i] = int(TokenType.CONTROL)
    if any(t == "" for t in tokens):
        raise CheckpointError("the tokenizer leaves ids without a token")
    merges = [f"{spell(a)} {spell(b)}" for a, b in bpe_merges(ranks)]
    return tokens, types, merges


def _tensors(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[tuple[str, np.ndarray]]:
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        t = t.to(torch.float32) if t.ndim == 1 else t.to(dtype)
        yield gguf_tensor_name(name), t.contiguous().numpy()


def export_gguf(
    ckpt_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, dtype: str = "float32"
) -> Path:
    """Write the checkpoint at `ckpt_dir` (Meta or HF layout, with its tokenizer) as a GGUF file at `out`.

    `dtype`: "float32" or "float16" for the matrices (1-D tensors are always float32). Returns `out`.
    """
    try:
        import gguf
    except ImportError as e:
        raise UsageError(
            "exporting GGUF needs the `gguf` package (llama.cpp's gguf-py): pip install gguf"
        ) from e
    if dtype not in _DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    args, model, tokenizer = load_model(ckpt_dir, device="cpu", dtype=torch.float32, progress=False)
    if tokenizer.n_words != 128256 or "<|eom_id|>" not in tokenizer.special_tokens:
        raise CheckpointError(f"{ckpt_dir}: only the Llama 3 tokenizer (128256 tokens) can be exported")
    out = Path(out)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(Path(ckpt_dir).name or "llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "float32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_vocab_size(args.vocab_size)
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_block_count(args.n_layers)
    writer.add_feed_forward_length(args.ffn_hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.n_kv_heads)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_rope_dimension_count(args.head_dim)

    tokens, types, merges = gguf_tokens(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.special_tokens["<|end_of_text|>"])
    writer.add_eot_token_id(tokenizer.eot_id)
    writer.add_eom_token_id(tokenizer.eom_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    if args.use_scaled_rope:
        writer.add_tensor("rope_freqs.weight", llama3_rope_freq_factors(args))
    for name, array in _tensors(model, _DTYPES[dtype]):
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint directory (Meta or HF layout, with its tokenizer)")
    parser.add_argument("out", help="the .gguf file to write")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float16")
    ns = parser.parse_args(argv)
    out = export_gguf(ns.checkpoint, ns.out, dtype=ns.dtype)
    summary = {"path": str(out), "bytes": out.stat().st_size, "dtype": ns.dtype}
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
