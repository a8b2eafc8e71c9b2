"""Tests for llama_agents.llama.checkpoint: both layouts against Hugging Face transformers, the tokenizer
conversion, model-parallel shards, and every kind of broken checkpoint.

Checkpoints are tiny random ones written by our own writer into temp dirs, in float32 on CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from llama_agents.errors import CheckpointError
from llama_agents.llama import _hf
from llama_agents.llama.args import PRESETS
from llama_agents.llama.checkpoint import (
    detect_layout,
    load_checkpoint,
    load_model,
    load_model_args,
    load_tokenizer,
    write_random_checkpoint,
)

TINY = PRESETS["tiny"]
TEXT = "The capital of France is Paris. Les élèves mangent des pommes 🍎, 12345 + 678 = 13023.\n" * 3


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tokenizer_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    common = {"seed": 3, "dtype": torch.float32, "tokenizer_path": tokenizer_path}
    return {
        "meta": write_random_checkpoint(root / "meta", "tiny", layout="meta", **common),
        "hf": write_random_checkpoint(root / "hf", "tiny", layout="hf", **common),
        "hf_sharded": write_random_checkpoint(
            root / "sharded", TINY, layout="hf", max_shard_bytes=12_000_000, **common
        ),
    }


@pytest.fixture(scope="module")
def prompt(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(TEXT, bos=True)])


def _hf_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        return hf(tokens).logits.float()


def test_hf_layout_equals_transformers_with_llama31_rope_scaling(tmp_path, tokenizer_path, prompt):
    # original_max_position 16 puts every RoPE frequency but the fastest in the scaled or smoothed band
    # at the positions of this prompt, so a wrong scaling could not pass unnoticed.
    args = TINY.replace(rope_original_max_position=16)
    path = write_random_checkpoint(
        tmp_path, args, layout="hf", seed=1, dtype=torch.float32, tokenizer_path=tokenizer_path
    )
    assert json.loads((path / "config.json").read_text())["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    assert prompt.shape[1] > 64
    expected = _hf_logits(path, prompt)
    ours = load_checkpoint(path, dtype=torch.float32, progress=False)
    assert ours.args == args
    with torch.no_grad():
        got = ours(prompt, 0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # the check is sensitive to the scaling: without it the logits are far off
    unscaled = _transformer_like(ours, args.replace(use_scaled_rope=False))
    with torch.no_grad():
        assert (unscaled(prompt, 0) - expected).abs().max() > 1e-2


def _transformer_like(model, args):
    from llama_agents.llama.model import Transformer

    other = Transformer(args)
    other.load_state_dict(model.state_dict())
    return other


def test_meta_and_hf_layouts_give_the_same_logits_as_transformers(ckpts, prompt):
    expected = _hf_logits(ckpts["hf"], prompt)
    with torch.no_grad():
        for key in ("meta", "hf", "hf_sharded"):
            model = load_checkpoint(ckpts[key], progress=False)
            assert model.args == TINY
            torch.testing.assert_close(model(prompt, 0), expected, rtol=0, atol=1e-4)


def test_meta_and_hf_weights_are_the_same_tensors_up_to_the_qk_permutation(ckpts):
    meta = torch.load(ckpts["meta"] / "consolidated.00.pth", weights_only=True)
    from safetensors.torch import load_file

    hf = load_file(ckpts["hf"] / "model.safetensors")
    assert len(hf) == len(meta)
    wq = hf["model.layers.1.self_attn.q_proj.weight"]
    assert not torch.equal(wq, meta["layers.1.attention.wq.weight"])
    assert torch.equal(_hf.hf_to_meta_qk(wq, TINY.n_heads), meta["layers.1.attention.wq.weight"])
    assert torch.equal(
        _hf.meta_to_hf_qk(meta["layers.1.attention.wk.weight"], TINY.n_kv_heads),
        hf["model.layers.1.self_attn.k_proj.weight"],
    )
    assert torch.equal(hf["model.layers.0.mlp.down_proj.weight"], meta["layers.0.feed_forward.w2.weight"])
    index = json.loads((ckpts["hf_sharded"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2


def test_load_model_returns_args_model_tokenizer_with_dtype_device_and_context(ckpts, tokenizer):
    args, model, tok = load_model(ckpts["meta"], dtype=torch.bfloat16, max_seq_len=256, progress=False)
    assert args.max_seq_len == 256 and model.args is args
    assert tok.encode(TEXT) == tokenizer.encode(TEXT)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    assert model.rope.cos.dtype == torch.float32 and model.rope.cos.shape[0] == 256
    model.setup_cache(1, 32)
    assert model.layers[0].attention.kv_cache.k.dtype == torch.bfloat16
    with torch.inference_mode():
        assert model(torch.tensor([[1, 2, 3]]), 0).dtype == torch.float32
    assert load_model_args(ckpts["hf"]) == TINY and detect_layout(ckpts["hf"]) == "hf"


def test_progress_bar_goes_to_stderr_only(ckpts, capsys):
    load_checkpoint(ckpts["meta"], progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "loading meta" in err
    load_checkpoint(ckpts["meta"], progress=False)
    assert capsys.readouterr() == ("", "")


def test_tokenizer_converted_from_tokenizer_json_equals_the_real_one(
    ckpts, tmp_path, tokenizer, tokenizer_path
):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from llama_agents.llama.tokenizer import special_token_names

    d = tmp_path / "hf"
    shutil.copytree(ckpts["hf"], d)
    shutil.rmtree(d / "original")
    converted = TikTokenConverter(vocab_file=str(tokenizer_path), extra_special_tokens=special_token_names())
    converted.converted().save(str(d / "tokenizer.json"))
    tok = load_tokenizer(d)
    assert tok.n_words == tokenizer.n_words == 128256
    assert tok.special_tokens == tokenizer.special_tokens
    for text in (TEXT, "  leading spaces\t\ttabs\r\n", "日本語のテキスト", "def f(x):\n    return x ** 2"):
        assert tok.encode(text, bos=True) == tokenizer.encode(text, bos=True)
    args, _model, _tok = load_model(d, progress=False)
    assert args == TINY
    # an added token at the wrong id is caught
    data = json.loads((d / "tokenizer.json").read_text())
    data["added_tokens"][0]["id"] = 5
    (d / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json.*<\|begin_of_text\|>"):
        load_tokenizer(d)


def test_model_parallel_shards_split_as_fairscale_does(tmp_path, ckpts):
    path = write_random_checkpoint(tmp_path, "tiny", seed=3, dtype=torch.float32, mp=2)
    full = torch.load(ckpts["meta"] / "consolidated.00.pth", weights_only=True)
    s0, s1 = (torch.load(path / f"consolidated.0{r}.pth", weights_only=True) for r in (0, 1))
    for name, tensor in full.items():
        if name.endswith(
            (
                "wq.weight",
                "wk.weight",
                "wv.weight",
                "w1.weight",
                "w3.weight",
                "tok_embeddings.weight",
                "output.weight",
            )
        ):
            assert torch.equal(torch.cat([s0[name], s1[name]], 0), tensor), name
        elif name.endswith(("wo.weight", "w2.weight")):
            assert torch.equal(torch.cat([s0[name], s1[name]], 1), tensor), name
        else:
            assert torch.equal(s0[name], tensor) and torch.equal(s1[name], tensor), name
    # Two shards load at model-parallel size 1 by resharding (concatenated back): the same weights.
    resharded = load_checkpoint(path, progress=False).state_dict()
    assert resharded.keys() == full.keys() - {"rope.freqs"}
    for name, tensor in resharded.items():
        assert torch.equal(tensor, full[name]), name


# ------------------------------------------------------------------------------- broken checkpoints


@pytest.fixture
def meta_copy(ckpts, tmp_path) -> Path:
    return Path(shutil.copytree(ckpts["meta"], tmp_path / "meta"))


@pytest.fixture
def hf_copy(ckpts, tmp_path) -> Path:
    return Path(shutil.copytree(ckpts["hf_sharded"], tmp_path / "hf"))


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_missing_directory_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"neither params\.json .* nor config\.json"):
        load_checkpoint(tmp_path)


def test_params_json_unknown_and_missing_key_name_the_file(meta_copy):
    _edit_json(meta_copy / "params.json", max_batch_size=32)
    with pytest.raises(CheckpointError, match=r"params\.json: unknown key\(s\) 'max_batch_size'"):
        load_checkpoint(meta_copy)
    _edit_json(meta_copy / "params.json", max_batch_size=None, rope_theta=None)
    with pytest.raises(CheckpointError, match=r"params\.json: missing key\(s\) 'rope_theta'"):
        load_checkpoint(meta_copy)
    (meta_copy / "params.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"params\.json: not valid JSON"):
        load_checkpoint(meta_copy)


def test_missing_weight_files(meta_copy, hf_copy):
    (meta_copy / "consolidated.00.pth").unlink()
    with pytest.raises(CheckpointError, match=r"meta: no consolidated\.NN\.pth"):
        load_checkpoint(meta_copy)
    (hf_copy / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors: file not found"):
        load_checkpoint(hf_copy)
    (hf_copy / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_checkpoint(hf_copy)


def test_shape_mismatch_names_file_and_tensor(meta_copy, hf_copy):
    _edit_json(meta_copy / "params.json", n_kv_heads=4)
    with pytest.raises(
        CheckpointError, match=r"consolidated\.00\.pth: tensor 'layers\.0\.attention\.wk\.weight' has shape"
    ):
        load_checkpoint(meta_copy, progress=False)
    _edit_json(hf_copy / "config.json", intermediate_size=64)
    with pytest.raises(
        CheckpointError, match=r"safetensors: tensor 'layers\.\d\.feed_forward\.w[123]\.weight' has shape"
    ):
        load_checkpoint(hf_copy, progress=False)


def test_missing_and_unexpected_tensors(meta_copy):
    path = meta_copy / "consolidated.00.pth"
    state = torch.load(path, weights_only=True)
    norm = state.pop("layers.1.ffn_norm.weight")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) layers\.1\.ffn_norm\.weight"):
        load_checkpoint(meta_copy, progress=False)
    state["layers.1.ffn_norm.weight"] = norm
    state["layers.2.ffn_norm.weight"] = norm
    torch.save(state, path)
    with pytest.raises(
        CheckpointError, match=r"consolidated\.00\.pth: unexpected tensor 'layers\.2\.ffn_norm\.weight'"
    ):
        load_checkpoint(meta_copy, progress=False)
    # rope.freqs (older Meta checkpoints) is recomputed, not an error
    del state["layers.2.ffn_norm.weight"]
    state["rope.freqs"] = torch.zeros(TINY.head_dim // 2)
    torch.save(state, path)
    load_checkpoint(meta_copy, progress=False)


def test_unexpected_hf_tensor(hf_copy):
    from safetensors.torch import load_file, save_file

    path = hf_copy / "model-00003-of-00003.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(4)
    save_file(tensors, path)
    with pytest.raises(
        CheckpointError, match=r"00003\.safetensors: unexpected tensor 'model\.layers\.0\.self_attn\.q_norm"
    ):
        load_checkpoint(hf_copy, progress=False)


@pytest.mark.parametrize("layout", ["meta", "hf"])
def test_truncated_weight_file(meta_copy, hf_copy, layout):
    d = meta_copy if layout == "meta" else hf_copy
    path = d / ("consolidated.00.pth" if layout == "meta" else "model-00001-of-00003.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{path.name}: cannot read the weights"):
        load_checkpoint(d, progress=False)


def test_vocabulary_size_must_match_the_tokenizer(tmp_path, tokenizer_path):
    path = write_random_checkpoint(
        tmp_path, TINY.replace(vocab_size=128000), dtype=torch.float32, tokenizer_path=tokenizer_path
    )
    with pytest.raises(
        CheckpointError, match=r"params\.json: vocab_size is 128000 but the tokenizer has 128256"
    ):
        load_model(path, progress=False)


def test_unsupported_hf_configs_are_named(hf_copy):
    _edit_json(hf_copy / "config.json", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(CheckpointError, match=r"config\.json: rope scaling type 'yarn'"):
        load_checkpoint(hf_copy)
    _edit_json(hf_copy / "config.json", rope_scaling=None, attention_bias=True)
    with pytest.raises(CheckpointError, match=r"config\.json: attention_bias"):
        load_checkpoint(hf_copy)
    _edit_json(hf_copy / "config.json", attention_bias=None, hidden_size=None)
    with pytest.raises(CheckpointError, match=r"config\.json: missing key 'hidden_size'"):
        load_checkpoint(hf_copy)


def test_transformers_5_rope_parameters_config_is_read(hf_copy):
    config = json.loads((hf_copy / "config.json").read_text())
    config["rope_parameters"] = {**config.pop("rope_scaling"), "rope_theta": config.pop("rope_theta")}
    args, tied = _hf.args_from_hf_config(config)
    assert args == TINY and not tied


def test_make_checkpoint_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).parent.parent / "tools" / "make_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path), "--layout", "hf", "--dtype", "float32", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == ["config.json", "model.safetensors", "original/tokenizer.model"]
    args, model, tok = load_model(tmp_path, progress=False)
    assert args == TINY and tok.n_words == TINY.vocab_size
    assert model.parameters().__next__().dtype == torch.float32


def test_writing_over_another_checkpoint_refuses_instead_of_mixing_them(tmp_path):
    # params.json left by a Meta write would make the directory load as the old Meta checkpoint, and a
    # third shard left by an mp=3-like write would join the new shards: both loaded stale weights before.
    d = write_random_checkpoint(tmp_path / "a", TINY, layout="meta", seed=1, dtype=torch.float32, mp=2)
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth.*params\.json.*empty directory"):
        write_random_checkpoint(d, TINY, layout="hf", seed=2, dtype=torch.float32)
    assert detect_layout(d) == "meta" and not (d / "config.json").exists()
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth"):
        write_random_checkpoint(d, TINY, layout="meta", seed=2, dtype=torch.float32, mp=1)
    # the same layout and shard count is simply rewritten
    write_random_checkpoint(d, TINY, layout="meta", seed=2, dtype=torch.float32, mp=2)
    h = write_random_checkpoint(
        tmp_path / "h", TINY, layout="hf", seed=1, dtype=torch.float32, max_shard_bytes=12_000_000
    )
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json"):
        write_random_checkpoint(h, TINY, layout="hf", seed=2, dtype=torch.float32)
