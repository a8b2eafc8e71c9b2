"""Write a random (seeded) Llama 3.1 checkpoint of any preset, in the Meta or Hugging Face layout.

    python tools/make_checkpoint.py /tmp/tiny --preset tiny --layout hf --dtype float32

The tokenizer defaults to the real Llama 3 `tokenizer.model` shipped in the llama-models package when it
is installed; pass `--tokenizer PATH` otherwise (or `--tokenizer none` to write no tokenizer). Prints one
JSON object describing what was written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from llama_agents.llama.args import PRESETS
from llama_agents.llama.checkpoint import write_random_checkpoint

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _default_tokenizer() -> str | None:
    try:
        import llama_models
    except ImportError:
        return None
    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    return str(path) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="directory to write (created if missing)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--layout", choices=["meta", "hf"], default="meta")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument(
        "--tokenizer", default=_default_tokenizer(), help="tokenizer.model to copy, or 'none'"
    )
    parser.add_argument("--mp", type=int, default=1, help="model-parallel shards (Meta layout)")
    parser.add_argument("--max-shard-bytes", type=int, default=None, help="split HF weights into files")
    ns = parser.parse_args(argv)
    tokenizer = None if ns.tokenizer in (None, "none") else ns.tokenizer
    out = write_random_checkpoint(
        ns.path,
        ns.preset,
        layout=ns.layout,
        seed=ns.seed,
        dtype=DTYPES[ns.dtype],
        tokenizer_path=tokenizer,
        mp=ns.mp,
        max_shard_bytes=ns.max_shard_bytes,
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    summary = {"path": str(out), "preset": ns.preset, "layout": ns.layout, "dtype": ns.dtype, "files": files}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
