"""Export to Hugging Face: a megatron-core GPTModel (as aistack builds it) and the exported
transformers model give the same logits, for Llama (GQA, SwiGLU, RoPE) and GPT-2 (tied)."""

from __future__ import annotations

import json

import pytest
import torch

from aistack.kinds.pretrain import ModelConfig, ParallelConfig

VOCAB = 200  # padded to 256 in megatron; the export keeps 200


@pytest.fixture(scope="module")
def megatron_state():
    """Megatron parallel state for one in-process rank (gloo), on the CPU."""
    # Before cpu_compat.install() (see export_hf's imports); the model classes too.
    import aistack.model.export_hf  # noqa: F401
    from transformers import GPT2LMHeadModel, LlamaForCausalLM  # noqa: F401

    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds

    init_model_parallel(1, 1)
    set_seeds(1234)
    yield
    destroy_model_parallel()


def build_and_run(model_cfg: ModelConfig, tokens: torch.Tensor):
    """A TP=1 PP=1 GPTModel with every weight, norm and bias perturbed (so each mapping matters),
    its full state dict and its logits over the real vocabulary."""
    from aistack.model import cpu_compat, gpt
    from aistack.model.layout import padded_vocab_size

    with cpu_compat.device_scope():
        model = gpt.build_gpt(model_cfg, ParallelConfig(), pre_process=True, post_process=True,
                              vocab_size=padded_vocab_size(VOCAB, model_cfg, 1), precision="fp32", use_te=False)
        model.eval()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
            logits = model(tokens, positions, attention_mask=None)
    return model.state_dict(), logits[..., :VOCAB]


def hf_logits(out_dir, tokens: torch.Tensor) -> tuple[torch.Tensor, object]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(tokens).logits, hf


def test_llama_with_gqa_matches_megatron(tmp_path, megatron_state):
    from aistack.model.export_hf import export_hf

    cfg = ModelConfig(arch="llama", num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                      ffn_hidden_size=96, seq_length=32, rotary_base=500000, vocab_size=VOCAB)
    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    state, expected = build_and_run(cfg, tokens)
    assert "decoder.layers.0.input_layernorm.weight" in state, "local spec names the norms input_layernorm/pre_mlp_layernorm"
    assert expected.std() > 0.5, "logits must spread for the comparison to mean something"

    out = export_hf(state, cfg, VOCAB, tmp_path / "hf")
    got, hf = hf_logits(out, tokens)
    assert type(hf).__name__ == "LlamaForCausalLM"
    config = json.loads((out / "config.json").read_text())
    assert (config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == (2, 96, VOCAB)
    assert config["rope_parameters"]["rope_theta"] == 500000
    assert not config["tie_word_embeddings"] and "lm_head.weight" in dict(hf.named_parameters())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_gpt2_tied_sharded_with_tokenizer_matches_megatron(tmp_path, megatron_state):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    from aistack.model.export_hf import export_hf

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20,
                            trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<|endoftext|>"]))
    tok_file = tmp_path / "tokenizer.json"
    tok.save(str(tok_file))

    cfg = ModelConfig(arch="gpt2", num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32, vocab_size=VOCAB)
    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(2))
    state, expected = build_and_run(cfg, tokens)
    assert "output_layer.weight" not in state, "gpt2 ties the output layer to the embedding"

    out = export_hf(state, cfg, VOCAB, tmp_path / "hf", tokenizer_json=tok_file, max_shard_bytes=100_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "small shards: several files and an index"
    got, hf = hf_logits(out, tokens)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.config.activation_function == "gelu" and hf.config.n_positions == 32
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "tied in HF too"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "the lazy fox"
    assert hf_tok(text)["input_ids"] == tok.encode(text).ids
    assert hf_tok.eos_token == "<|endoftext|>" and hf.config.eos_token_id == tok.token_to_id("<|endoftext|>")
    # a class transformers 4 knows too (serving images, NeMo 2.7), not v5's TokenizersBackend
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_qkv_is_split_per_query_group_not_in_thirds():
    from aistack.model.export_hf import split_qkv

    # 4 heads, 2 groups, head dim 1: megatron rows are [q0 q1 k0 v0 | q2 q3 k1 v1].
    rows = torch.tensor([0.0, 1, 10, 20, 2, 3, 11, 21]).unsqueeze(1)
    q, k, v = split_qkv(rows, num_heads=4, num_groups=2)
    assert q.flatten().tolist() == [0, 1, 2, 3]
    assert k.flatten().tolist() == [10, 11] and v.flatten().tolist() == [20, 21]


def test_cli_exports_a_trained_run(tmp_path, capsys):
    """`aistack export RUN --to hf` on a real 1-step run of recipes/pretrain/gpt-tiny.yaml."""
    from aistack.model import checkpoint

    from aistack.cli import main
    from aistack.launch import launcher
    from aistack.model.dataset import make_tiny_dataset
    from conftest import RECIPES
    from safetensors.torch import load_file

    data = make_tiny_dataset(tmp_path / "data" / "tiny", vocab_size=512, num_docs=100)
    result = launcher.launch(RECIPES / "pretrain" / "gpt-tiny.yaml", [
        f"output.root={tmp_path / 'runs'}", f"data.paths=[{{path: {data}}}]", "tracking.mode=disabled", "train.steps=1",
    ], on="local")
    assert main(["export", str(result.run.path), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "exported" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 512
    state = checkpoint.load_full_state_dict(result.run.path)
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    torch.testing.assert_close(weights["model.embed_tokens.weight"], state["embedding.word_embeddings.weight"][:512])
