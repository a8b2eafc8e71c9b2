"""Model-parallel set-up for fairscale's layers, so a single process needs no distributed set-up.

What it does: `ensure_model_parallel()` makes sure `torch.distributed` and fairscale's model-parallel
group exist. Under torchrun (or any caller that already initialised `torch.distributed`) it uses what is
there, with a model-parallel group spanning the whole world. In a plain single process it starts a
world-size-1 gloo group through a `FileStore` in a private temp directory (no network port) and a
model-parallel group of size 1; fairscale's layers then do no communication at all.

What it does not do: pipeline parallelism, data parallelism, or tearing the groups down again (they live
for the process, as torch.distributed groups do).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading

import torch
import torch.distributed as dist

__all__ = ["ensure_model_parallel", "model_parallel_rank", "model_parallel_world_size"]

logger = logging.getLogger(__name__)
_lock = threading.Lock()


def ensure_model_parallel() -> int:
    """Initialise torch.distributed and fairscale's model-parallel group if needed; return its size."""
    import fairscale.nn.model_parallel.initialize as fs_init

    with _lock:
        if not dist.is_initialized():
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            if world_size > 1 and "MASTER_ADDR" in os.environ:
                # Launched by torchrun but the caller did not initialise: use its environment.
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                logger.info("initialising torch.distributed (%s) from the torchrun environment", backend)
                dist.init_process_group(backend=backend, init_method="env://")
            else:
                store_dir = tempfile.mkdtemp(prefix="llama_agents_dist_")
                store = dist.FileStore(os.path.join(store_dir, "store"), 1)
                logger.debug("initialising a single-process gloo group (store in %s)", store_dir)
                dist.init_process_group(backend="gloo", store=store, rank=0, world_size=1)
        if not fs_init.model_parallel_is_initialized():
            # fairscale print()s three lines here; library code must not write to stdout, so they are
            # captured for this one call and logged instead.
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                fs_init.initialize_model_parallel(dist.get_world_size())
            for line in captured.getvalue().splitlines():
                logger.debug("fairscale: %s", line)
        return fs_init.get_model_parallel_world_size()


def model_parallel_world_size() -> int:
    """The size of fairscale's model-parallel group (initialising it if needed)."""
    return ensure_model_parallel()


def model_parallel_rank() -> int:
    """This process's rank in fairscale's model-parallel group (initialising it if needed)."""
    import fairscale.nn.model_parallel.initialize as fs_init

    ensure_model_parallel()
    return fs_init.get_model_parallel_rank()
