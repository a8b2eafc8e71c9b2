"""Benchmark our generator against HF transformers on the same random weights; print one JSON object.

Writes a seeded random checkpoint of a preset in the Hugging Face layout (our loader reads it too, so
both sides load the very same file), then for one prompt of `--prompt-len` random token ids measures,
greedily and after a warm-up run:

- ours: `Llama.stream` (prefill, then one token at a time through our fixed-shape KV cache); time to
  first token and decode tokens/s come from `Llama.last_stats`.
- hf (`--peer hf`): `LlamaForCausalLM` with its own KV cache, the same greedy loop by hand, for the
  same number of new tokens.

Both sides synchronise with the device once per token (the sampled id is read back), as a real
streaming generator must. `--compile auto|on|off` picks our decode path for `ours` (auto: compiled
on CUDA, eager elsewhere). With `--compare`, the same run also measures, in `runs`:

- ours_eager / ours_compiled: our generator with `compile=False` / `compile=True` (CUDA graphs on GPU);
- hf_eager: the hand loop above; hf_static: `generate(..., cache_implementation="static")` with
  transformers' defaults; hf_static_compiled: the same after `model.forward = torch.compile(
  model.forward, mode="reduce-overhead", fullgraph=True)` as transformers' docs show. For `generate`
  runs TTFT is a 1-token `generate` and decode is `(n - 1) / (t_n - t_1)`.

and reports ratios and the fraction of the memory-bandwidth ceiling each run reaches: per token a
decode step reads every weight except the embedding table (one row), so the ceiling is
`bandwidth / weight_bytes_per_token`. `--bandwidth-gbs` defaults per detected GPU (H200: 4800 nominal,
4140 measured, both reported; H100: 3350), null on CPU. Example:

    python tools/bench_generate.py --preset tiny --prompt-len 128 --new-tokens 64 --device cpu
    python tools/bench_generate.py --preset llama3.1-8b --prompt-len 512 --new-tokens 256 --compare

What it does not do: batches or sampling other than greedy.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from llama_agents.llama.args import get_preset
from llama_agents.llama.checkpoint import write_random_checkpoint
from llama_agents.llama.generation import Llama, default_device, default_dtype
from llama_agents.llama.tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _default_tokenizer_path() -> Path:
    try:
        import llama_models
    except ImportError as e:  # pragma: no cover - a dev dependency
        raise SystemExit("pass --tokenizer /path/to/tokenizer.model (llama-models is not installed)") from e
    return Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# GPU name fragment -> (nominal, measured) memory bandwidth in GB/s
_GPU_BANDWIDTH: dict[str, tuple[float, float | None]] = {"H200": (4800.0, 4140.0), "H100": (3350.0, None)}
_COMPILE = {"auto": None, "on": True, "off": False}


def _build_ours(
    ckpt: Path,
    tokenizer: Tokenizer,
    max_seq_len: int,
    device: torch.device,
    dtype: torch.dtype,
    compile: bool | None = None,
) -> Llama:
    return Llama.build(
        ckpt,
        max_seq_len=max_seq_len,
        device=device,
        dtype=dtype,
        tokenizer=tokenizer,
        progress=False,
        compile=compile,
    )


def _measure_ours(
    ckpt: Path, tokenizer: Tokenizer, prompt: list[int], ns: argparse.Namespace, compile: bool | None
) -> tuple[list[int], dict[str, Any], int]:
    """Build, warm up, measure; returns tokens, timings (+ compile stats) and weight bytes per token."""
    device, dtype = ns.device_t, ns.dtype_t
    llama = _build_ours(ckpt, tokenizer, ns.prompt_len + ns.new_tokens, device, dtype, compile)
    _run_ours(llama, prompt, min(4, ns.new_tokens))  # warm-up
    tokens, stats = _run_ours(llama, prompt, ns.new_tokens)
    cs = llama.compile_stats
    stats["compiled"] = cs.enabled
    stats["compile_warmup_s"] = cs.warmup_s
    model = llama.model
    embed = model.tok_embeddings.weight
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= embed.numel() * embed.element_size() - embed.shape[1] * embed.element_size()
    del llama, model, embed
    _free(device)
    return tokens, stats, weight_bytes


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def _run_hf_generate(
    model: Any, prompt: list[int], new_tokens: int, device: torch.device
) -> tuple[list[int], dict[str, float]]:
    """HF `generate` with a static cache: TTFT from a 1-token generate, decode from an n-token one."""
    ids = torch.tensor([prompt], device=device)
    kw: dict[str, Any] = {"do_sample": False, "cache_implementation": "static", "pad_token_id": 0}

    def timed(n: int) -> tuple[float, list[int]]:
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        _sync(device)
        return time.perf_counter() - t0, out[0, len(prompt) :].tolist()

    ttft, _ = timed(1)
    total, tokens = timed(new_tokens)
    decode = max(total - ttft, 0.0)
    tps = (new_tokens - 1) / decode if new_tokens > 1 and decode > 0 else 0.0
    return tokens, {"ttft_s": ttft, "decode_s": decode, "decode_tokens_per_s": tps}


def _bandwidth(device: torch.device, override: float | None) -> tuple[float | None, float | None]:
    if override is not None:
        return override, None
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, (nominal, measured) in _GPU_BANDWIDTH.items():
        if key in name:
            return nominal, measured
    return None, None


def _run_ours(llama: Llama, prompt: list[int], new_tokens: int) -> tuple[list[int], dict[str, float]]:
    llama.reset_cache()  # a cold start: no prefix reuse from the warm-up
    out = list(llama.stream(prompt, max_gen_len=new_tokens, temperature=0))
    stats = llama.last_stats
    assert stats is not None
    return out, {
        "ttft_s": stats.ttft_s,
        "decode_s": stats.decode_s,
        "decode_tokens_per_s": stats.tokens_per_s,
    }


@torch.inference_mode()
def _run_hf(
    model: Any, prompt: list[int], new_tokens: int, device: torch.device
) -> tuple[list[int], dict[str, float]]:
    # transformers 5 renamed `past_key_values` to `cache`; support both.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.tensor([prompt], device=device)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens = [int(nxt)]
    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        past = getattr(out, cache_kw)
        out = model(input_ids=nxt, use_cache=True, logits_to_keep=1, **{cache_kw: past})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(nxt))
    decode = time.perf_counter() - t1
    tps = (new_tokens - 1) / decode if new_tokens > 1 and decode > 0 else 0.0
    return tokens, {"ttft_s": ttft, "decode_s": decode, "decode_tokens_per_s": tps}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _compare(
    ckpt: Path,
    tokenizer: Tokenizer,
    prompt: list[int],
    ns: argparse.Namespace,
    reference: list[int],
    weight_bytes: int,
    ours: dict[str, Any],
) -> dict[str, Any]:
    """Every variant on the same weights and prompt; ratios and the bandwidth fractions."""
    device, dtype, n = ns.device_t, ns.dtype_t, ns.new_tokens
    runs: dict[str, dict[str, Any]] = {}
    agree: dict[str, int] = {}
    for name, flag in (("ours_eager", False), ("ours_compiled", True)):
        if ours["compiled"] == flag:  # already measured as `ours`: one 8B build less
            runs[name], agree[name] = dict(ours), len(reference)
            continue
        tokens, runs[name], _ = _measure_ours(ckpt, tokenizer, prompt, ns, flag)
        agree[name] = _common_prefix(reference, tokens)
    if ns.peer == "hf":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=dtype).to(device).eval()
        _run_hf(model, prompt, min(4, n), device)  # warm-up
        tokens, runs["hf_eager"] = _run_hf(model, prompt, n, device)
        agree["hf_eager"] = _common_prefix(reference, tokens)
        _run_hf_generate(model, prompt, min(4, n), device)  # warm-up
        tokens, runs["hf_static"] = _run_hf_generate(model, prompt, n, device)
        agree["hf_static"] = _common_prefix(reference, tokens)
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        t0 = time.perf_counter()
        _run_hf_generate(model, prompt, min(4, n), device)  # compiles
        compile_s = time.perf_counter() - t0
        tokens, runs["hf_static_compiled"] = _run_hf_generate(model, prompt, n, device)
        runs["hf_static_compiled"]["compile_warmup_s"] = compile_s
        agree["hf_static_compiled"] = _common_prefix(reference, tokens)
        del model
        _free(device)
    nominal, measured = _bandwidth(device, ns.bandwidth_gbs)
    for run in runs.values():
        tps = run["decode_tokens_per_s"]
        run["fraction_of_ceiling"] = tps * weight_bytes / (nominal * 1e9) if nominal else None
        run["fraction_of_measured_ceiling"] = tps * weight_bytes / (measured * 1e9) if measured else None

    def ratio(a: str, b: str) -> float | None:
        if a in runs and b in runs and runs[b]["decode_tokens_per_s"] > 0:
            return runs[a]["decode_tokens_per_s"] / runs[b]["decode_tokens_per_s"]
        return None

    return {
        "runs": runs,
        "greedy_tokens_agreeing_with_ours": agree,
        "weight_bytes_per_token": weight_bytes,
        "bandwidth_gbs": nominal,
        "measured_bandwidth_gbs": measured,
        "ceiling_tokens_per_s": nominal * 1e9 / weight_bytes if nominal else None,
        "measured_ceiling_tokens_per_s": measured * 1e9 / weight_bytes if measured else None,
        "ratios": {
            "ours_compiled_vs_ours_eager": ratio("ours_compiled", "ours_eager"),
            "ours_compiled_vs_hf_eager": ratio("ours_compiled", "hf_eager"),
            "ours_compiled_vs_hf_static": ratio("ours_compiled", "hf_static"),
            "ours_compiled_vs_hf_static_compiled": ratio("ours_compiled", "hf_static_compiled"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="a preset of llama_agents.llama.args.PRESETS")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu"
    )
    parser.add_argument("--peer", choices=("hf", "none"), default="hf")
    parser.add_argument(
        "--compile", choices=sorted(_COMPILE), default="auto", help="our decode path for `ours`"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also measure ours eager and compiled, HF eager, static cache and compiled static cache",
    )
    parser.add_argument(
        "--bandwidth-gbs", type=float, default=None, help="memory bandwidth (default: per detected GPU)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompt")
    parser.add_argument("--tokenizer", type=Path, default=None, help="a Llama 3 tokenizer.model")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to write the checkpoint (default: temp)"
    )
    ns = parser.parse_args(argv)
    if ns.prompt_len < 1 or ns.new_tokens < 1:
        parser.error("--prompt-len and --new-tokens must be >= 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    device = torch.device(ns.device) if ns.device else default_device()
    dtype = DTYPES[ns.dtype] if ns.dtype else default_dtype(device)
    ns.device_t, ns.dtype_t = device, dtype
    args = get_preset(ns.preset)
    tokenizer_path = ns.tokenizer or _default_tokenizer_path()
    tokenizer = Tokenizer(tokenizer_path)
    gen = torch.Generator().manual_seed(ns.seed)
    prompt = [
        tokenizer.bos_id,
        *torch.randint(0, tokenizer.bos_id, (ns.prompt_len - 1,), generator=gen).tolist(),
    ]
    max_seq_len = ns.prompt_len + ns.new_tokens

    with tempfile.TemporaryDirectory(prefix="bench_generate_", dir=ns.workdir) as tmp:
        t0 = time.perf_counter()
        ckpt = write_random_checkpoint(
            Path(tmp) / ns.preset, args, layout="hf", seed=ns.seed, dtype=dtype, tokenizer_path=tokenizer_path
        )
        write_s = time.perf_counter() - t0

        assert max_seq_len == ns.prompt_len + ns.new_tokens
        ours_tokens, ours, weight_bytes = _measure_ours(ckpt, tokenizer, prompt, ns, _COMPILE[ns.compile])
        compile_info = {k: ours.pop(k) for k in ("compiled", "compile_warmup_s")}
        result: dict[str, Any] = {
            "preset": ns.preset,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."),
            "prompt_len": ns.prompt_len,
            "new_tokens": ns.new_tokens,
            "generated": len(ours_tokens),
            "checkpoint_write_s": write_s,
            "ours": ours,
            "ours_compiled": compile_info["compiled"],
            "ours_compile_warmup_s": compile_info["compile_warmup_s"],
            "hf": None,
            "decode_speedup_vs_hf": None,
            "ttft_ratio_vs_hf": None,
            "greedy_tokens_agreeing_with_hf": None,
        }
        if ns.compare:
            first = {**ours, **compile_info}
            result.update(_compare(ckpt, tokenizer, prompt, ns, ours_tokens, weight_bytes, first))
        if ns.peer == "hf":
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=dtype).to(device).eval()
            n = len(ours_tokens)  # the same work even if ours stopped early on a stop token
            _run_hf(model, prompt, min(4, n), device)  # warm-up
            hf_tokens, hf = _run_hf(model, prompt, n, device)
            result["hf"] = hf
            if hf["decode_tokens_per_s"] > 0:
                result["decode_speedup_vs_hf"] = ours["decode_tokens_per_s"] / hf["decode_tokens_per_s"]
            if hf["ttft_s"] > 0:
                result["ttft_ratio_vs_hf"] = ours["ttft_s"] / hf["ttft_s"]
            result["greedy_tokens_agreeing_with_hf"] = _common_prefix(ours_tokens, hf_tokens)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
