"""Model parallelism on CPU with gloo: real processes with torchrun's environment, tiny random checkpoints.

Two processes give the same logits (1e-4, float32) as one, for checkpoints saved at MP 1 and MP 2, in
the HF layout, and with fewer KV heads than ranks; a checkpoint saved at MP 2 loads in one process;
the CLI under `torchrun --nproc-per-node 2` prints the same agent transcript as one process; a world
size that does not divide the model, a shard set that cannot be a split, a dead worker and a failing
rank 0 all end with clear errors instead of hangs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_agents.errors import CheckpointError, UsageError
from llama_agents.llama.args import get_preset
from llama_agents.llama.checkpoint import load_checkpoint, write_random_checkpoint
from llama_agents.llama.parallel import _pieces, check_divisible, split_full_tensor, stored_kv_heads

SCRIPT = Path(__file__).with_name("parallel_script.py")
TOKENS = torch.tensor([[128000, 9906, 1917, 11, 1268, 527, 499, 30, 358, 1097]])
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env | extra


def _launch(
    *args: str, nproc: int = 2, timeout: float = 120, **extra: str
) -> list[subprocess.CompletedProcess]:
    """Start `nproc` ranks of parallel_script.py with torchrun's variables; wait for all of them."""
    port = str(_free_port())
    procs = []
    for rank in range(nproc):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **extra,
        )
        procs.append(
            subprocess.Popen(
                [PY, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done


def _logits(ckpt: Path) -> torch.Tensor:
    model = load_checkpoint(ckpt, dtype=torch.float32, max_seq_len=64, progress=False)
    with torch.inference_mode():
        return model.forward(TOKENS, 0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parallel")
    one_kv = get_preset("tiny").replace(n_kv_heads=1)
    kw = {"seed": 5, "dtype": torch.float32, "tokenizer_path": tokenizer_path}
    return {
        "mp1": write_random_checkpoint(root / "mp1", "tiny", **kw),
        "mp2": write_random_checkpoint(root / "mp2", "tiny", mp=2, **kw),
        "hf": write_random_checkpoint(root / "hf", "tiny", layout="hf", **kw),
        "kv1": write_random_checkpoint(root / "kv1", one_kv, **kw),
        "kv1_mp2": write_random_checkpoint(root / "kv1_mp2", one_kv, mp=2, **kw),
        "bad": write_random_checkpoint(
            root / "bad", get_preset("tiny").replace(n_heads=3, n_kv_heads=1, dim=48), **kw
        ),
    }


# ------------------------------------------------------------------------------- in one process


def test_shard_plan_covers_each_rank_exactly():
    args = get_preset("tiny").replace(n_heads=8, n_kv_heads=2)
    hd = args.head_dim
    # 8 -> 2: rank 1 takes the second half of shards 4..7, one piece each.
    assert _pieces("layers.0.attention.wq.weight", 8 * hd, args, 8, 2, 1) == [(s, 0, hd) for s in range(4, 8)]
    # 1 -> 4 with 2 KV heads: ranks 0, 1 hold head 0 and ranks 2, 3 head 1 (replicated).
    assert [_pieces("layers.0.attention.wk.weight", 2 * hd, args, 1, 4, r) for r in range(4)] == [
        [(0, 0, hd)], [(0, 0, hd)], [(0, hd, 2 * hd)], [(0, hd, 2 * hd)]
    ]  # fmt: skip
    # 4 (replicated) -> 2: each rank's head from the first replica's shard.
    assert [_pieces("layers.0.attention.wv.weight", 2 * hd, args, 4, 2, r) for r in range(2)] == [
        [(0, 0, hd)], [(2, 0, hd)]
    ]  # fmt: skip
    assert stored_kv_heads(8, 16) == 16 and stored_kv_heads(8, 4) == 8
    w = torch.arange(2 * hd * 3.0).reshape(2 * hd, 3)
    shards = split_full_tensor("layers.0.attention.wk.weight", w, args, 4)
    assert [torch.equal(s, w[(r // 2) * hd : (r // 2 + 1) * hd]) for r, s in enumerate(shards)] == [True] * 4


def test_world_sizes_that_do_not_divide_the_model_are_named():
    args = get_preset("tiny")  # 4 heads, 2 KV heads
    check_divisible(args, 4)  # KV heads replicated: fine
    with pytest.raises(UsageError, match=r"model-parallel size 3 does not divide n_heads=4, n_kv_heads=2"):
        check_divisible(args, 3)
    with pytest.raises(UsageError, match=r"size 8 does not divide n_heads=4"):
        check_divisible(args, 8)
    with pytest.raises(UsageError, match=r"size 2 does not divide vocab_size=101, the feed-forward width"):
        check_divisible(args.replace(vocab_size=101, multiple_of=1, ffn_dim_multiplier=1.01), 2)


def test_checkpoint_saved_at_mp2_loads_in_one_process(ckpts):
    want = _logits(ckpts["mp1"])
    torch.testing.assert_close(_logits(ckpts["mp2"]), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(_logits(ckpts["kv1_mp2"]), _logits(ckpts["kv1"]), rtol=0, atol=1e-4)


def test_shard_sets_that_cannot_be_a_split_are_refused(ckpts, tmp_path):
    three = tmp_path / "three"
    three.mkdir()
    for name in ("params.json", "consolidated.00.pth", "consolidated.01.pth"):
        (three / name).write_bytes((ckpts["mp2"] / name).read_bytes())
    (three / "consolidated.02.pth").write_bytes((ckpts["mp2"] / "consolidated.01.pth").read_bytes())
    with pytest.raises(CheckpointError, match=r"three: 3 shards cannot be a split.*n_heads=4"):
        load_checkpoint(three, progress=False)
    gap = tmp_path / "gap"
    gap.mkdir()
    (gap / "params.json").write_bytes((ckpts["mp2"] / "params.json").read_bytes())
    for src, dst in (("00", "00"), ("01", "02")):
        (gap / f"consolidated.{dst}.pth").write_bytes((ckpts["mp2"] / f"consolidated.{src}.pth").read_bytes())
    with pytest.raises(
        CheckpointError, match=r"consolidated.02.pth is not consolidated.01.pth; a shard is missing"
    ):
        load_checkpoint(gap, progress=False)
    # A shard from another model-parallel size: its rows do not fit.
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "params.json").write_bytes((ckpts["mp2"] / "params.json").read_bytes())
    (wrong / "consolidated.00.pth").write_bytes((ckpts["mp2"] / "consolidated.00.pth").read_bytes())
    (wrong / "consolidated.01.pth").write_bytes((ckpts["mp1"] / "consolidated.00.pth").read_bytes())
    with pytest.raises(CheckpointError, match=r"consolidated.01.pth: tensor .* as one of 2 shards"):
        load_checkpoint(wrong, progress=False)
    with pytest.raises(CheckpointError, match=r"mp=3: the model-parallel size 3 does not divide"):
        write_random_checkpoint(tmp_path / "mp3", "tiny", mp=3)


# ---------------------------------------------------------------------------- several processes


def test_two_processes_give_the_logits_of_one(ckpts, tmp_path):
    names = ["mp1", "mp2", "hf", "kv1", "kv1_mp2"]
    runs = _launch("logits", str(tmp_path), *(str(ckpts[n]) for n in names))
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout == ""
    got = torch.load(tmp_path / "logits.pt", weights_only=True)
    want = _logits(ckpts["mp1"])
    want_kv1 = _logits(ckpts["kv1"])
    for name in names:
        expected = want_kv1 if name.startswith("kv1") else want
        torch.testing.assert_close(got[str(ckpts[name])], expected, rtol=0, atol=1e-4, msg=name)


def test_errors_across_processes(ckpts, tmp_path):
    runs = _launch(
        "errors", str(tmp_path), str(ckpts["bad"]), str(ckpts["mp1"]), LLAMA_AGENTS_DIST_TIMEOUT="20",
        LLAMA_AGENTS_WORKER_IDLE_TIMEOUT="20",
    )  # fmt: skip
    assert runs[0].returncode == 0, runs[0].stderr[-3000:]
    assert runs[1].returncode == 3
    seen = json.loads((tmp_path / "errors.0.json").read_text())
    assert seen["divisible"].startswith("the model-parallel size 2 does not divide n_heads=3;")
    assert "rank 0: sending a forward pass to the workers failed; a worker rank died" in seen["died"]
    assert float(seen["seconds"]) < 25


def test_worker_leaves_quietly_when_rank0_fails(ckpts, tmp_path):
    runs = _launch("leader_fails", str(tmp_path), str(ckpts["mp1"]))
    assert runs[0].returncode == 1 and "rank 0 fails on purpose" in runs[0].stderr
    assert runs[1].returncode == 0, runs[1].stderr[-3000:]
    assert runs[1].stdout == "" and "Traceback" not in runs[1].stderr


def test_cli_under_torchrun_prints_the_transcript_of_one_process(ckpts):
    cli = ["run", "--model", str(ckpts["mp1"]), "how are you?", "--temperature", "0", "--max-tokens", "6"]
    cli += ["--max-seq-len", "256", "--date", "2024-09-21", "--json"]
    one = subprocess.run(
        [PY, "-m", "llama_agents.cli", *cli], env=_env(), capture_output=True, text=True, timeout=120
    )
    two = subprocess.run(
        [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "llama_agents.cli", *cli],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert one.returncode == 1, one.stderr[-3000:]  # cut off by --max-tokens: not a final answer
    assert two.returncode == 1, two.stderr[-3000:]
    assert one.stdout.startswith("{"), one.stderr[-3000:]
    assert two.stdout.startswith("{"), two.stderr[-3000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # only rank 0 printed: one JSON document
    assert a["messages"] == b["messages"] and a["answer"] == b["answer"]
    assert a["stop_reason"] == b["stop_reason"]
    assert [s["generated"] for s in a["steps"]] == [s["generated"] for s in b["steps"]] == [6]
