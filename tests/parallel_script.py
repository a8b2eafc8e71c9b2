"""Run by tests/test_parallel.py in each of several processes, with torchrun's environment variables.

`python tests/parallel_script.py SCENARIO OUT_DIR [ARGS...]`; each rank writes what it saw to
`OUT_DIR/<scenario>.<rank>.json` (or `.pt` for logits).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from llama_agents.errors import UsageError
from llama_agents.llama.generation import Llama
from llama_agents.llama.parallel import ParallelError, run_worker

RANK = int(os.environ["RANK"])
TOKENS = torch.tensor([[128000, 9906, 1917, 11, 1268, 527, 499, 30, 358, 1097]])


def _build(ckpt: str) -> Llama:
    return Llama.build(ckpt, device="cpu", dtype=torch.float32, max_seq_len=64, progress=False)


def logits(out: Path, ckpts: list[str]) -> None:
    """Every rank loads each checkpoint and runs one forward pass; rank 0 saves the logits."""
    results = {}
    for ckpt in ckpts:
        llama = _build(ckpt)
        with torch.inference_mode():
            results[ckpt] = llama.model.forward(TOKENS, 0)
        # Rank 0 releases the others from their worker loop (they ran nothing else through it).
        assert llama.parallel is not None
        if RANK == 0:
            llama.parallel.stop()
        else:
            run_worker(llama)
    if RANK == 0:
        torch.save(results, out / "logits.pt")


def errors(out: Path, bad_ckpt: str, ckpt: str) -> None:
    """A model the world size does not divide, then a worker that dies under rank 0."""
    seen: dict[str, str] = {}
    try:
        _build(bad_ckpt)
    except UsageError as e:
        seen["divisible"] = str(e)
    llama = _build(ckpt)
    if RANK != 0:
        os._exit(3)  # dies without a word, as a crashed rank does
    time.sleep(1.0)
    start = time.monotonic()
    try:
        list(llama.stream([128000, 9906], max_gen_len=4, temperature=0.0))
    except ParallelError as e:
        seen["died"] = str(e)
    seen["seconds"] = str(time.monotonic() - start)
    (out / "errors.0.json").write_text(json.dumps(seen))
    os._exit(0)  # the process group cannot be torn down cleanly with a dead peer


def leader_fails(out: Path, ckpt: str) -> None:
    """Rank 0 fails with an uncaught error after one request; the worker must leave its loop, quietly."""
    from llama_agents.backends.local import LocalBackend

    backend = LocalBackend(_build(ckpt), seed=0)
    list(backend.complete([128000, 9906], max_tokens=3, temperature=0.0, top_p=1.0))
    raise RuntimeError("rank 0 fails on purpose")


if __name__ == "__main__":
    scenario, out_dir, *rest = sys.argv[1:]
    {"logits": lambda o, *a: logits(o, list(a)), "errors": errors, "leader_fails": leader_fails}[scenario](
        Path(out_dir), *rest
    )
