"""Model parallelism across processes (torchrun): set-up, resharding on load, and the leader/worker protocol.

What it does:

- `init_distributed(device)`: under torchrun (`WORLD_SIZE > 1`), start `torch.distributed` (NCCL on CUDA,
  gloo on CPU) with a timeout from `$LLAMA_AGENTS_DIST_TIMEOUT` (seconds, default 600) and fairscale's
  model-parallel group over the whole world. `local_device()` is `cuda:$LOCAL_RANK` on GPU machines.
- `check_divisible(args, mp)`: a clear `UsageError` when the world size does not divide the model.
  When there are fewer KV heads than ranks (`mp % n_kv_heads == 0`), each rank holds one KV head,
  replicated `mp / n_kv_heads` times (`stored_kv_heads`).
- Resharding: `meta_shard_tensors` reads this rank's slice of every weight from Meta shards saved at
  any model-parallel size (concatenate along the split dim, split for the new size), opening the
  `.pth` files with mmap so each rank reads only the pages it needs; `hf_shard_tensors` slices
  safetensors files directly (`get_slice`). `read_meta_shard` opens one `.pth` shard (mmap, tensors
  only) for this and for `checkpoint.py`'s unresharded load.
- `Coordinator`: rank 0 (the leader) drives generation and, before every forward pass, broadcasts the
  tokens, position and `last_only` to the other ranks over a separate gloo group; `run_worker(llama)`
  is the loop the other ranks run, taking part in each forward pass until the leader says stop (at
  exit, through `atexit`) or disappears. Every rank thus computes with rank 0's sampled tokens.

What it does not do: pipeline or data parallelism, multi-node launch helpers, more than one leader, or
recover from a dead rank (the others raise `ParallelError` and exit).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llama_agents.errors import CheckpointError, LlamaAgentsError, UsageError
from llama_agents.llama.args import ModelArgs

__all__ = [
    "DIST_TIMEOUT_ENV",
    "WORKER_IDLE_TIMEOUT_ENV",
    "Coordinator",
    "ParallelError",
    "check_divisible",
    "dist_timeout",
    "hf_shard_tensors",
    "init_distributed",
    "launched_world_size",
    "local_device",
    "meta_shard_tensors",
    "read_meta_shard",
    "run_worker",
    "shard_dim",
    "split_full_tensor",
    "stored_kv_heads",
    "worker_idle_timeout",
]

logger = logging.getLogger(__name__)

DIST_TIMEOUT_ENV = "LLAMA_AGENTS_DIST_TIMEOUT"
"""Seconds a collective (a forward pass's all-reduce) may wait for the other ranks; default 600."""
WORKER_IDLE_TIMEOUT_ENV = "LLAMA_AGENTS_WORKER_IDLE_TIMEOUT"
"""Seconds a worker rank waits for rank 0's next request (rank 0 may be running tools or waiting for
the user); default 86400."""

_COLUMN = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
_ROW = ("attention.wo", "feed_forward.w2")
_KV = ("attention.wk", "attention.wv")

_OP_STOP, _OP_FORWARD = 0, 1


class ParallelError(LlamaAgentsError):
    """A model-parallel rank died or stopped answering; the run cannot go on."""


# ------------------------------------------------------------------------------------------ set-up


def _seconds_from_env(name: str, default: float) -> datetime.timedelta:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return datetime.timedelta(seconds=default)
    try:
        value = float(raw)
    except ValueError as e:
        raise UsageError(f"${name} must be a number of seconds, got {raw!r}") from e
    if not value > 0:
        raise UsageError(f"${name} must be a positive number of seconds, got {raw!r}")
    return datetime.timedelta(seconds=value)


def dist_timeout() -> datetime.timedelta:
    """How long a collective waits for the other ranks (`$LLAMA_AGENTS_DIST_TIMEOUT`, default 600 s)."""
    return _seconds_from_env(DIST_TIMEOUT_ENV, 600.0)


def worker_idle_timeout() -> datetime.timedelta:
    """How long a worker waits for rank 0's next request (`$LLAMA_AGENTS_WORKER_IDLE_TIMEOUT`, 1 day)."""
    return _seconds_from_env(WORKER_IDLE_TIMEOUT_ENV, 86400.0)


def launched_world_size() -> int:
    """The world size: torch.distributed's when initialised, else torchrun's `$WORLD_SIZE` (default 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise UsageError(f"$WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from e


def local_device() -> torch.device:
    """`cuda:$LOCAL_RANK` when CUDA is available, else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> int:
    """Start torch.distributed and fairscale's model-parallel group if needed; return the model-parallel size.

    Under torchrun with `WORLD_SIZE > 1` this initialises the default group from the environment (NCCL
    when `device` is CUDA, else gloo) with `dist_timeout()`; a single process gets a private world-size-1
    group. Groups someone else initialised are used as they are.
    """
    from llama_agents.llama._parallel import ensure_model_parallel

    if not dist.is_initialized() and launched_world_size() > 1:
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if var not in os.environ:
                raise UsageError(
                    f"$WORLD_SIZE is {os.environ['WORLD_SIZE']} but ${var} is not set: launch with "
                    "torchrun --nproc-per-node N, or initialise torch.distributed yourself"
                )
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            # NCCL needs each process bound to its own GPU before the first collective.
            torch.cuda.set_device(device)
        timeout = dist_timeout()
        logger.info(
            "initialising torch.distributed (%s, rank %s of %s, timeout %ss)",
            backend,
            os.environ["RANK"],
            os.environ["WORLD_SIZE"],
            timeout.total_seconds(),
        )
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    return ensure_model_parallel()


# ------------------------------------------------------------------------------------ divisibility


def stored_kv_heads(n_kv_heads: int, mp: int) -> int:
    """KV heads the column-parallel wk/wv hold at size `mp`: all of them, or one per rank (replicated)."""
    return max(n_kv_heads, mp)


def check_divisible(args: ModelArgs, mp: int) -> None:
    """Raise `UsageError` naming every dimension the model-parallel size `mp` does not divide."""
    problems = []
    if args.n_heads % mp:
        problems.append(f"n_heads={args.n_heads}")
    if args.n_kv_heads % mp and mp % args.n_kv_heads:
        problems.append(f"n_kv_heads={args.n_kv_heads} (nor does it divide {mp}, to replicate them)")
    if args.vocab_size % mp:
        problems.append(f"vocab_size={args.vocab_size}")
    if args.ffn_hidden_dim % mp:
        problems.append(f"the feed-forward width {args.ffn_hidden_dim}")
    if problems:
        raise UsageError(
            f"the model-parallel size {mp} does not divide {', '.join(problems)}; run with a "
            "--nproc-per-node that divides them"
        )


def shard_dim(name: str) -> int | None:
    """The dim fairscale splits weight `name` along across model-parallel ranks (None: replicated)."""
    if name in ("tok_embeddings.weight", "output.weight"):
        return 0
    if any(f".{part}." in name for part in _COLUMN):
        return 0
    if any(f".{part}." in name for part in _ROW):
        return 1
    return None


def _is_kv(name: str) -> bool:
    return any(f".{part}." in name for part in _KV)


# ------------------------------------------------------------------------------------- resharding

Piece = tuple[int, int, int]  # (source shard, start, stop) along the split dim, in that shard's rows


def _pieces(name: str, full: int, args: ModelArgs, n_src: int, n_dst: int, rank: int) -> list[Piece]:
    """Which rows of which source shard make rank `rank`'s slice at size `n_dst` (source size `n_src`)."""
    if _is_kv(name):
        hd, n_kv = args.head_dim, args.n_kv_heads
        src_stored, dst_stored = stored_kv_heads(n_kv, n_src), stored_kv_heads(n_kv, n_dst)
        src_per, dst_per = src_stored // n_src, dst_stored // n_dst
        pieces: list[Piece] = []
        for stored in range(rank * dst_per, (rank + 1) * dst_per):
            logical = stored * n_kv // dst_stored
            src = logical * src_stored // n_kv  # the first replica of that head in the source layout
            shard, local = divmod(src, src_per)
            if pieces and pieces[-1][0] == shard and pieces[-1][2] == local * hd:
                pieces[-1] = (shard, pieces[-1][1], (local + 1) * hd)
            else:
                pieces.append((shard, local * hd, (local + 1) * hd))
        return pieces
    src_len, dst_len = full // n_src, full // n_dst
    lo, hi = rank * dst_len, (rank + 1) * dst_len
    pieces = []
    for shard in range(lo // src_len, (hi - 1) // src_len + 1):
        a, b = max(lo, shard * src_len), min(hi, (shard + 1) * src_len)
        pieces.append((shard, a - shard * src_len, b - shard * src_len))
    return pieces


def _src_rows(name: str, full: int, args: ModelArgs, n_src: int) -> int:
    if _is_kv(name):
        return stored_kv_heads(args.n_kv_heads, n_src) // n_src * args.head_dim
    return full // n_src


def read_meta_shard(path: Path) -> dict[str, Any]:
    """The state dict of one Meta `consolidated.NN.pth` shard, memory-mapped on the CPU (tensors only,
    no pickled code); a `CheckpointError` naming the file when it cannot be read or is not a dict."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, unpickling refused
        raise CheckpointError(f"{path}: cannot read the weights ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return state


def meta_shard_tensors(
    shards: Sequence[Path],
    args: ModelArgs,
    shapes: dict[str, tuple[int, ...]],
    *,
    mp: int,
    rank: int,
    ignored: frozenset[str] = frozenset(),
) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """This rank's slice (at size `mp`) of each weight of a Meta checkpoint saved as `len(shards)` shards.

    `shapes`: the full (unsharded) shape of every weight. A shard is opened (mmap) only when one of its
    rows is needed; replicated weights (norms) come from shard 0. Yields `(name, tensor, file)`.
    """
    n_src = len(shards)
    for i, path in enumerate(shards):
        if path.name != f"consolidated.{i:02d}.pth":
            raise CheckpointError(
                f"{path.parent}: {n_src} shards but {path.name} is not consolidated.{i:02d}.pth; "
                "a shard is missing"
            )
    try:
        check_divisible(args, n_src)
    except UsageError as e:
        raise CheckpointError(
            f"{shards[0].parent}: {n_src} shards cannot be a split of this model: {e}"
        ) from e
    states: dict[int, dict[str, Any]] = {}

    def state(i: int) -> dict[str, Any]:
        if i not in states:
            path = shards[i]
            loaded = read_meta_shard(path)
            unexpected = [k for k in loaded if k not in shapes and k not in ignored]
            if unexpected:
                raise CheckpointError(f"{path}: unexpected tensor {unexpected[0]!r}")
            states[i] = loaded
        return states[i]

    def get(i: int, name: str) -> torch.Tensor:
        tensor = state(i).get(name)
        if tensor is None:
            raise CheckpointError(f"{shards[i]}: missing tensor {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{shards[i]}: entry {name!r} is not a tensor")
        return tensor

    for name, full_shape in shapes.items():
        dim = shard_dim(name)
        if dim is None:
            yield name, get(0, name), shards[0]
            continue
        full = full_shape[dim]
        rows = _src_rows(name, full, args, n_src)
        parts = []
        for shard, a, b in _pieces(name, full, args, n_src, mp, rank):
            tensor = get(shard, name)
            if tensor.dim() != len(full_shape) or tensor.shape[dim] != rows:
                raise CheckpointError(
                    f"{shards[shard]}: tensor {name!r} has shape {tuple(tensor.shape)}, but as one of "
                    f"{n_src} shards of {full_shape} it should have {rows} along dim {dim}"
                )
            parts.append(tensor.narrow(dim, a, b - a))
        used = {s for s, _, _ in _pieces(name, full, args, n_src, mp, rank)}
        yield name, parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim), shards[min(used)]


def hf_shard_tensors(
    files: Sequence[Path],
    args: ModelArgs,
    shapes: dict[str, tuple[int, ...]],
    *,
    tied: bool,
    mp: int,
    rank: int,
    to_hf_name: Callable[[str], str],
    hf_to_meta_qk: Callable[[torch.Tensor, int], torch.Tensor],
) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """This rank's slice (at size `mp`) of each weight of a Hugging Face safetensors checkpoint.

    Reads only the rows (or columns) this rank needs with `safe_open(...).get_slice`; q/k rows are
    permuted back to Meta's layout head by head. A tied model's `output.weight` is its embedding.
    """
    from safetensors import safe_open

    where: dict[str, Path] = {}
    handles = []
    try:
        for path in files:
            try:
                handle = safe_open(os.fspath(path), framework="pt", device="cpu")
            except Exception as e:  # SafetensorError: truncated or corrupt header
                raise CheckpointError(f"{path}: cannot read the weights ({e})") from e
            handles.append(handle)
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                where[key] = path
        by_path = dict(zip(files, handles, strict=True))
        for name, full_shape in shapes.items():
            key = to_hf_name(name)
            if name == "output.weight" and key not in where and tied:
                key = to_hf_name("tok_embeddings.weight")
            if key not in where:
                raise CheckpointError(f"{files[0].parent}: missing tensor {key!r}")
            path = where[key]
            try:
                sl = by_path[path].get_slice(key)
                shape = tuple(sl.get_shape())
            except Exception as e:
                raise CheckpointError(f"{path}: cannot read tensor {key!r} ({e})") from e
            if shape != full_shape:
                raise CheckpointError(
                    f"{path}: tensor {key!r} has shape {shape}, the config says {full_shape}"
                )
            dim = shard_dim(name)
            if dim is None:
                yield name, sl[:], path
                continue
            parts = []
            for _, a, b in _pieces(name, full_shape[dim], args, 1, mp, rank):
                part = sl[a:b] if dim == 0 else sl[:, a:b]
                if name.endswith(("attention.wq.weight", "attention.wk.weight")):
                    part = hf_to_meta_qk(part, (b - a) // args.head_dim)
                parts.append(part)
            yield name, parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim), path
    finally:
        handles.clear()


def split_full_tensor(name: str, tensor: torch.Tensor, args: ModelArgs, mp: int) -> list[torch.Tensor]:
    """Split a full weight into the `mp` shards fairscale holds (KV heads replicated when fewer than `mp`)."""
    dim = shard_dim(name)
    if dim is None:
        return [tensor] * mp
    full = tensor.shape[dim]
    return [
        torch.cat([tensor.narrow(dim, a, b - a) for _, a, b in _pieces(name, full, args, 1, mp, r)], dim=dim)
        for r in range(mp)
    ]


# ------------------------------------------------------------------------------ leader and workers


class Coordinator:
    """Keeps the ranks of one model in step: rank 0 announces each forward pass, the others follow.

    Built collectively on every rank (it creates a gloo group for the small control messages, with
    `worker_idle_timeout()`, so a worker can wait while rank 0 runs tools or waits for the user). On
    rank 0, `stop()` runs at interpreter exit, so the workers leave their loop when the driver ends,
    normally or by an exception.
    """

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise UsageError("Coordinator needs torch.distributed to be initialised (see init_distributed)")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.group = dist.new_group(backend="gloo", timeout=worker_idle_timeout())
        self.stopped = False
        if self.is_leader:
            atexit.register(self.stop)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        try:
            dist.broadcast(tensor, src=0, group=self.group)
        except Exception as e:  # gloo/NCCL report a dead peer or a timeout as RuntimeError/DistBackendError
            self.stopped = True
            side = "a worker rank" if self.is_leader else "rank 0"
            raise ParallelError(
                f"rank {self.rank}: {what} failed; {side} died or stopped answering ({e})"
            ) from e

    def announce(self, tokens: torch.Tensor, start_pos: int, *, last_only: bool = False) -> None:
        """Rank 0: tell the workers to run `forward(tokens, start_pos, last_only=...)` with it."""
        assert self.is_leader, "only rank 0 announces forward passes"
        if self.stopped:
            raise ParallelError("the worker ranks were already stopped; build a new Llama")
        bsz, seqlen = tokens.shape
        header = torch.tensor([_OP_FORWARD, start_pos, bsz, seqlen, int(last_only)], dtype=torch.long)
        self._broadcast(header, "sending a forward pass to the workers")
        self._broadcast(tokens.detach().to("cpu", torch.long).contiguous(), "sending tokens to the workers")

    def stop(self) -> None:
        """Rank 0: release the workers (they return from `run_worker`). Idempotent."""
        if not self.is_leader or self.stopped:
            return
        self.stopped = True
        try:
            dist.broadcast(torch.tensor([_OP_STOP, 0, 0, 0, 0], dtype=torch.long), src=0, group=self.group)
        except Exception as e:  # workers already gone: nothing left to release
            logger.warning("could not tell the worker ranks to stop: %s", e)
        logger.debug("worker ranks told to stop")

    def receive(self) -> tuple[torch.Tensor, int, bool] | None:
        """A worker: the next `(tokens, start_pos, last_only)` to run, or None when rank 0 says stop."""
        assert not self.is_leader, "rank 0 does not receive"
        header = torch.empty(5, dtype=torch.long)
        self._broadcast(header, "waiting for rank 0's next request")
        op, start_pos, bsz, seqlen, last_only = header.tolist()
        if op == _OP_STOP:
            self.stopped = True
            return None
        tokens = torch.empty(bsz, seqlen, dtype=torch.long)
        self._broadcast(tokens, "receiving tokens from rank 0")
        return tokens, start_pos, bool(last_only)


def run_worker(llama: Any) -> None:
    """The loop of a rank other than 0: run every forward pass rank 0 announces, until it says stop.

    Returns when rank 0 stops (normally, or at its exit after an error); raises `ParallelError` when
    rank 0 disappears without a word.
    """
    coordinator: Coordinator | None = llama.parallel
    if coordinator is None or coordinator.is_leader:
        raise UsageError("run_worker is for model-parallel ranks other than 0")
    logger.info("rank %d: following rank 0", coordinator.rank)
    steps = 0
    with torch.inference_mode():
        while True:
            request = coordinator.receive()
            if request is None:
                logger.info("rank %d: rank 0 is done after %d forward passes", coordinator.rank, steps)
                return
            tokens, start_pos, last_only = request
            llama._run_model(tokens.to(llama.device), start_pos, last_only=last_only)
            steps += 1
