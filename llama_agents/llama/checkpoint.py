"""Load Llama 3.1 checkpoints (Meta `.pth` or Hugging Face safetensors) and write random ones.

Layouts:

- **Meta**: `params.json` (read strictly, see `ModelArgs.from_params`), `consolidated.NN.pth` (one per
  model-parallel rank), `tokenizer.model`.
- **Hugging Face**: `config.json`, `model.safetensors` or `model-0000x-of-0000y.safetensors` with
  `model.safetensors.index.json`; the tokenizer is `original/tokenizer.model` when present, else it is
  converted from `tokenizer.json`. HF q/k weights are in the rotate-half layout and are permuted back to
  Meta's interleaved layout as they load.

Loading builds the `Transformer` on the meta device, opens `.pth` files with `torch.load(mmap=True,
weights_only=True)` and safetensors with `safe_open`, converts one tensor at a time to the target device
and dtype, and installs them with `load_state_dict(assign=True)`: no second full copy of the weights is
ever made. A tqdm bar on stderr shows progress (`progress=False` hides it). Broken input raises
`CheckpointError` naming the file and what is wrong.

Paths may be cloud URLs that blobfile understands (`gs://`, `az://`): the files a model needs are first
copied into a local cache directory (`cache_dir`, else `$LLAMA_AGENTS_CACHE`, else
`~/.cache/llama_agents/checkpoints`), one sub-directory per URL; files already there with the same size
are not copied again.

Model parallel (under torchrun, see `parallel.py` and docs/parallel.md): a Meta checkpoint saved at the
model-parallel size in use loads one shard per rank; saved at another size it is resharded as it loads
(each rank reads its rows of the shards it needs, through mmap). HF weights are split on load, each
rank reading only its slices of the safetensors files.

What it does not do: load quantised or vision checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from tqdm import tqdm

from llama_agents.errors import CheckpointError, UsageError
from llama_agents.llama import _hf
from llama_agents.llama._parallel import ensure_model_parallel, model_parallel_rank
from llama_agents.llama.args import ModelArgs, get_preset
from llama_agents.llama.model import Transformer
from llama_agents.llama.parallel import (
    check_divisible,
    hf_shard_tensors,
    meta_shard_tensors,
    read_meta_shard,
    split_full_tensor,
)

__all__ = [
    "Layout",
    "LoadedModel",
    "detect_layout",
    "load_checkpoint",
    "load_model",
    "load_model_args",
    "load_tokenizer",
    "meta_param_shapes",
    "resolve_checkpoint_dir",
    "write_random_checkpoint",
]

logger = logging.getLogger(__name__)

Layout = Literal["meta", "hf"]
PathLike = str | os.PathLike[str]

# Tensors some checkpoints carry that are not weights: recomputed at load, safe to skip.
_IGNORED_META = frozenset({"rope.freqs"})
_IGNORED_HF_SUFFIX = "rotary_emb.inv_freq"


class LoadedModel(NamedTuple):
    args: ModelArgs
    model: Transformer
    tokenizer: Any  # llama_agents.llama.tokenizer.Tokenizer


# ------------------------------------------------------------------------------------------- paths


def _is_url(path: PathLike) -> bool:
    return "://" in os.fspath(path)


def _wanted_remote_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith("original/"):  # HF repos keep a second, Meta-layout copy of the weights there
        return rel == "original/tokenizer.model"
    return "/" not in rel and (
        name
        in {"params.json", "config.json", "tokenizer.model", "tokenizer.json", "model.safetensors.index.json"}
        or name.endswith((".pth", ".safetensors"))
    )


def resolve_checkpoint_dir(path: PathLike, *, cache_dir: PathLike | None = None) -> Path:
    """A local directory holding the checkpoint: `path` itself, or a local copy of a cloud URL."""
    if not _is_url(path):
        local = Path(path)
        if not local.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {local}")
        return local
    import blobfile as bf

    url = os.fspath(path).rstrip("/")
    root = Path(
        cache_dir or os.environ.get("LLAMA_AGENTS_CACHE") or Path.home() / ".cache/llama_agents/checkpoints"
    )
    local = root / hashlib.sha256(url.encode()).hexdigest()[:16]
    try:
        if not bf.isdir(url):
            raise CheckpointError(f"checkpoint directory not found: {url}")
        for dirpath, _dirs, files in bf.walk(url):
            for name in files:
                src = bf.join(dirpath, name)
                rel = src[len(url) + 1 :]
                if not _wanted_remote_file(rel):
                    continue
                dst = local / rel
                size = bf.stat(src).size
                if dst.exists() and dst.stat().st_size == size:
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                logger.info("copying %s to %s (%d bytes)", src, dst, size)
                tmp = dst.with_name(dst.name + ".partial")
                bf.copy(src, os.fspath(tmp), overwrite=True)
                os.replace(tmp, dst)
    except CheckpointError:
        raise
    except Exception as e:  # blobfile raises its own errors and OSErrors
        raise CheckpointError(f"cannot copy checkpoint {url} to {local}: {e}") from e
    return local


def detect_layout(ckpt_dir: PathLike) -> Layout:
    """`"meta"` when the directory has `params.json`, `"hf"` when it has `config.json`."""
    d = Path(ckpt_dir)
    if (d / "params.json").is_file():
        return "meta"
    if (d / "config.json").is_file():
        return "hf"
    raise CheckpointError(
        f"{d}: neither params.json (Meta layout) nor config.json (Hugging Face layout) found"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def load_model_args(ckpt_dir: PathLike, *, max_seq_len: int | None = None) -> ModelArgs:
    """The ModelArgs of a local checkpoint; `max_seq_len` (if given) sizes the RoPE table."""
    d = Path(ckpt_dir)
    overrides = {} if max_seq_len is None else {"max_seq_len": max_seq_len}
    if detect_layout(d) == "meta":
        path = d / "params.json"
        return ModelArgs.from_params(_read_json(path), source=str(path), **overrides)
    path = d / "config.json"
    args, _tied = _hf.args_from_hf_config(_read_json(path), source=str(path))
    return args.replace(**overrides) if overrides else args


def load_tokenizer(ckpt_dir: PathLike) -> Any:
    """The checkpoint's `Tokenizer`: `tokenizer.model`, `original/tokenizer.model`, or `tokenizer.json`."""
    from llama_agents.llama.tokenizer import Tokenizer

    d = Path(ckpt_dir)
    for candidate in (d / "tokenizer.model", d / "original" / "tokenizer.model"):
        if candidate.is_file():
            try:
                return Tokenizer(candidate)
            except UsageError as e:
                raise CheckpointError(f"{candidate}: {e}") from e
    path = d / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{d}: no tokenizer.model, original/tokenizer.model or tokenizer.json found")
    ranks, added = _hf.ranks_from_tokenizer_json(_read_json(path), source=str(path))
    try:
        tok = Tokenizer.from_ranks(ranks, name=str(path))
    except UsageError as e:
        raise CheckpointError(f"{path}: {e}") from e
    for token_id, text in sorted(added.items()):
        if tok.special_tokens.get(text) != token_id:
            raise CheckpointError(
                f"{path}: added token {text!r} has id {token_id}, but a Llama 3 tokenizer with "
                f"{len(ranks)} ranks gives it {tok.special_tokens.get(text)}"
            )
    return tok


# ------------------------------------------------------------------------------------------ shapes


def meta_param_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every tensor of a full (unsharded) Meta checkpoint, in order, with its shape."""
    hd, hidden = args.head_dim, args.ffn_hidden_dim
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (args.vocab_size, args.dim)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes[p + "attention.wq.weight"] = (args.n_heads * hd, args.dim)
        shapes[p + "attention.wk.weight"] = (args.n_kv_heads * hd, args.dim)
        shapes[p + "attention.wv.weight"] = (args.n_kv_heads * hd, args.dim)
        shapes[p + "attention.wo.weight"] = (args.dim, args.n_heads * hd)
        shapes[p + "feed_forward.w1.weight"] = (hidden, args.dim)
        shapes[p + "feed_forward.w2.weight"] = (args.dim, hidden)
        shapes[p + "feed_forward.w3.weight"] = (hidden, args.dim)
        shapes[p + "attention_norm.weight"] = (args.dim,)
        shapes[p + "ffn_norm.weight"] = (args.dim,)
    shapes["norm.weight"] = (args.dim,)
    shapes["output.weight"] = (args.vocab_size, args.dim)
    return shapes


# ----------------------------------------------------------------------------------------- loading


def _meta_tensors(d: Path, args: ModelArgs) -> Iterator[tuple[str, torch.Tensor, Path]]:
    shards = sorted(d.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{d}: no consolidated.NN.pth weight file found")
    mp = ensure_model_parallel()
    if len(shards) != mp:
        logger.info("resharding %d consolidated.*.pth shards for model-parallel size %d", len(shards), mp)
        yield from meta_shard_tensors(
            shards, args, meta_param_shapes(args), mp=mp, rank=model_parallel_rank(), ignored=_IGNORED_META
        )
        return
    path = shards[model_parallel_rank()]
    for name, tensor in read_meta_shard(path).items():
        if name in _IGNORED_META:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor")
        yield name, tensor, path


def _hf_weight_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map'")
        files = [d / f for f in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: file not found (listed in {index.name})")
        return files
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{d}: no model.safetensors or model.safetensors.index.json found")


def _hf_tensors(d: Path, args: ModelArgs, tied: bool) -> Iterator[tuple[str, torch.Tensor, Path]]:
    from safetensors import safe_open

    mp = ensure_model_parallel()
    if mp != 1:
        yield from hf_shard_tensors(
            _hf_weight_files(d),
            args,
            meta_param_shapes(args),
            tied=tied,
            mp=mp,
            rank=model_parallel_rank(),
            to_hf_name=_hf.meta_name_to_hf,
            hf_to_meta_qk=_hf.hf_to_meta_qk,
        )
        return
    seen_embedding: tuple[torch.Tensor, Path] | None = None
    has_head = False
    for path in _hf_weight_files(d):
        try:
            handle = safe_open(os.fspath(path), framework="pt", device="cpu")
        except Exception as e:  # SafetensorError: truncated or corrupt header
            raise CheckpointError(f"{path}: cannot read the weights ({e})") from e
        with handle as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.endswith(_IGNORED_HF_SUFFIX):
                    continue
                name = _hf.hf_name_to_meta(key)
                if name is None:
                    raise CheckpointError(f"{path}: unexpected tensor {key!r}")
                try:
                    tensor = f.get_tensor(key)
                except Exception as e:
                    raise CheckpointError(f"{path}: cannot read tensor {key!r} ({e})") from e
                if name.endswith(("attention.wq.weight", "attention.wk.weight")):
                    heads = args.n_heads if "wq" in name else args.n_kv_heads
                    if tensor.dim() != 2 or tensor.shape[0] % (2 * heads):
                        raise CheckpointError(f"{path}: {key!r} has shape {tuple(tensor.shape)}")
                    tensor = _hf.hf_to_meta_qk(tensor, heads)
                if name == "tok_embeddings.weight":
                    seen_embedding = (tensor, path)
                has_head |= name == "output.weight"
                yield name, tensor, path
    if tied and not has_head and seen_embedding is not None:
        yield "output.weight", seen_embedding[0], seen_embedding[1]


def _load_weights(
    model: Transformer,
    tensors: Iterator[tuple[str, torch.Tensor, Path]],
    *,
    where: Path,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: bool,
) -> None:
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    loaded: dict[str, torch.Tensor] = {}
    bar = tqdm(
        total=len(expected),
        desc=f"loading {where.name}",
        unit="tensor",
        file=sys.stderr,
        disable=not progress,
    )
    with bar:
        for name, tensor, path in tensors:
            if name not in expected:
                raise CheckpointError(f"{path}: unexpected tensor {name!r}")
            if name in loaded:
                raise CheckpointError(f"{path}: tensor {name!r} appears twice")
            if tuple(tensor.shape) != expected[name]:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"the config says {expected[name]}"
                )
            if not tensor.is_floating_point():
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {tensor.dtype}, not floating point")
            loaded[name] = tensor.to(device=device, dtype=dtype or tensor.dtype)
            bar.update(1)
    missing = [n for n in expected if n not in loaded]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(f"{where}: missing tensor(s) {shown}")
    model.load_state_dict(loaded, assign=True, strict=True)
    model.rope.rebuild(device)


def load_checkpoint(
    ckpt_dir: PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    max_seq_len: int | None = None,
    progress: bool = True,
    tokenizer: Any | None = None,
    cache_dir: PathLike | None = None,
) -> Transformer:
    """Load the Transformer of a checkpoint directory (Meta or HF layout, local or URL).

    `dtype` None keeps the stored dtype; `max_seq_len` sizes the RoPE table (default: the checkpoint's
    context). When `tokenizer` is given, a vocabulary of another size is a `CheckpointError`.
    """
    d = resolve_checkpoint_dir(ckpt_dir, cache_dir=cache_dir)
    layout = detect_layout(d)
    args = load_model_args(d, max_seq_len=max_seq_len)
    config = d / ("params.json" if layout == "meta" else "config.json")
    if tokenizer is not None and tokenizer.n_words != args.vocab_size:
        raise CheckpointError(
            f"{config}: vocab_size is {args.vocab_size} but the tokenizer has {tokenizer.n_words} tokens; "
            "the weights and the tokenizer come from different models"
        )
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model = Transformer(args, device="meta", dtype=dtype)
    if layout == "meta":
        tensors = _meta_tensors(d, args)
    else:
        _args, tied = _hf.args_from_hf_config(_read_json(config), source=str(config))
        tensors = _hf_tensors(d, args, tied)
    _load_weights(model, tensors, where=d, device=dev, dtype=dtype, progress=progress)
    logger.info("loaded %s (%s layout) on %s", d, layout, dev)
    return model


def load_model(
    ckpt_dir: PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    max_seq_len: int | None = None,
    progress: bool = True,
    cache_dir: PathLike | None = None,
) -> LoadedModel:
    """`(args, model, tokenizer)` of a checkpoint; the tokenizer must match the vocabulary size."""
    d = resolve_checkpoint_dir(ckpt_dir, cache_dir=cache_dir)
    tokenizer = load_tokenizer(d)
    model = load_checkpoint(
        d, device=device, dtype=dtype, max_seq_len=max_seq_len, progress=progress, tokenizer=tokenizer
    )
    return LoadedModel(model.args, model, tokenizer)


# ------------------------------------------------------------------------------------------ writer


def _random_tensors(args: ModelArgs, seed: int, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded random weights, one tensor at a time: embeddings N(0,1), linears N(0,1/fan_in), norms ~1."""
    gen = torch.Generator().manual_seed(seed)
    for name, shape in meta_param_shapes(args).items():
        if len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name == "tok_embeddings.weight":
            t = torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) * shape[1] ** -0.5
        yield name, t.to(dtype)


def _split_for_mp(name: str, tensor: torch.Tensor, args: ModelArgs, mp: int) -> list[torch.Tensor]:
    """The `mp` shards fairscale holds of `tensor` (KV heads replicated when fewer than `mp`)."""
    if mp == 1:
        return [tensor]
    return [c.clone() for c in split_full_tensor(name, tensor, args, mp)]


def write_random_checkpoint(
    path: PathLike,
    args_or_preset: ModelArgs | str,
    *,
    layout: Layout = "meta",
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    tokenizer_path: PathLike | None = None,
    mp: int = 1,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write a checkpoint of random weights (seeded) in the Meta or HF layout; return its directory.

    Meta layout: `params.json`, `consolidated.NN.pth` for `mp` model-parallel shards (split the way
    fairscale splits each layer; KV heads replicated when `mp` exceeds them), `tokenizer.model`
    (copied from `tokenizer_path`, when given). HF layout:
    `config.json` with Llama 3.1 `rope_scaling`, `model.safetensors` (or, with `max_shard_bytes`,
    `model-0000x-of-0000y.safetensors` + index), the tokenizer at `original/tokenizer.model`. The same
    `seed` gives the same weights in both layouts.
    """
    args = get_preset(args_or_preset) if isinstance(args_or_preset, str) else args_or_preset
    if layout not in ("meta", "hf"):
        raise CheckpointError(f"layout must be 'meta' or 'hf', got {layout!r}")
    if mp < 1 or (layout == "hf" and mp != 1):
        raise CheckpointError(f"mp={mp}: model-parallel shards exist only in the Meta layout (mp >= 1)")
    if mp > 1:
        try:
            check_divisible(args, mp)
        except UsageError as e:
            raise CheckpointError(f"mp={mp}: {e}") from e
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    _refuse_stale_files(out, layout, mp, max_shard_bytes)
    tensors = _random_tensors(args, seed, dtype)
    if layout == "meta":
        (out / "params.json").write_text(json.dumps(args.to_params(), indent=2) + "\n")
        shards: list[dict[str, torch.Tensor]] = [{} for _ in range(mp)]
        for name, tensor in tensors:
            for shard, piece in zip(shards, _split_for_mp(name, tensor, args, mp), strict=True):
                shard[name] = piece
        for rank, shard in enumerate(shards):
            torch.save(shard, out / f"consolidated.{rank:02d}.pth")
        tok_dst = out / "tokenizer.model"
    else:
        _write_hf(out, args, tensors, dtype, max_shard_bytes)
        tok_dst = out / "original" / "tokenizer.model"
    if tokenizer_path is not None:
        tok_dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(tokenizer_path, tok_dst)
    logger.info("wrote a random %s-layout checkpoint to %s", layout, out)
    return out


def _refuse_stale_files(out: Path, layout: Layout, mp: int, max_shard_bytes: int | None) -> None:
    """A `CheckpointError` when `out` holds checkpoint files this write would not replace.

    They would decide what loads: a `params.json` left there makes the directory load as the old Meta
    checkpoint (detect_layout prefers it), extra `consolidated.NN.pth` shards become part of the new
    one, and a stale `model.safetensors.index.json` is read instead of a new `model.safetensors`.
    """
    if layout == "meta":
        stale = [out / "config.json"] + [
            p for p in out.glob("consolidated.*.pth") if p.name >= f"consolidated.{mp:02d}.pth"
        ]
    else:
        stale = [out / "params.json", *out.glob("consolidated.*.pth")]
        if max_shard_bytes is None:
            stale.append(out / "model.safetensors.index.json")
    found = sorted(p.name for p in stale if p.exists())
    if found:
        raise CheckpointError(
            f"{out} already holds {', '.join(found)} from another checkpoint, which would be loaded with "
            f"(or instead of) the new {layout}-layout weights; write into an empty directory"
        )


def _write_hf(
    out: Path,
    args: ModelArgs,
    tensors: Iterator[tuple[str, torch.Tensor]],
    dtype: torch.dtype,
    max_shard_bytes: int | None,
) -> None:
    from safetensors.torch import save_file

    (out / "config.json").write_text(json.dumps(_hf.hf_config_from_args(args, dtype), indent=2) + "\n")
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors:
        if name.endswith("attention.wq.weight"):
            tensor = _hf.meta_to_hf_qk(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = _hf.meta_to_hf_qk(tensor, args.n_kv_heads)
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][_hf.meta_name_to_hf(name)] = tensor.contiguous()
        size += nbytes
    if max_shard_bytes is None:
        save_file(groups[0], out / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, out / fname, metadata={"format": "pt"})
        for key, t in group.items():
            weight_map[key] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
