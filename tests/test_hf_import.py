"""Import from Hugging Face: a megatron GPTModel exported to a transformers folder and imported
back has exactly its weights and logits (Llama with GQA, GPT-2 tied with biases), which are
also transformers' own; a recipe model block that does not match config.json is refused."""

from __future__ import annotations

import json

import pytest
import torch

from aistack.kinds.pretrain import ModelConfig, ParallelConfig
from test_export_hf import VOCAB, build_and_run, hf_logits, megatron_state  # noqa: F401  (a fixture)

LLAMA = ModelConfig(arch="llama", num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=96, seq_length=32, rotary_base=500000, vocab_size=VOCAB)
GPT2 = ModelConfig(arch="gpt2", num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32, vocab_size=VOCAB)


def imported_logits(cfg: ModelConfig, folder, tokens: torch.Tensor) -> torch.Tensor:
    """A freshly initialised GPTModel (other weights than the exported one), loaded from `folder`."""
    from aistack.model.dist.megatron import set_seeds
    from aistack.model import cpu_compat, gpt
    from aistack.model.import_hf import load_hf
    from aistack.model.layout import padded_vocab_size

    set_seeds(99)
    with cpu_compat.device_scope():
        model = gpt.build_gpt(cfg, ParallelConfig(), pre_process=True, post_process=True,
                              vocab_size=padded_vocab_size(VOCAB, cfg, 1), precision="fp32", use_te=False)
        load_hf(folder, [model], cfg, VOCAB)
        model.eval()
        with torch.no_grad():
            positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
            return model(tokens, positions, attention_mask=None)[..., :VOCAB]


@pytest.mark.parametrize("cfg", [LLAMA, GPT2], ids=["llama-gqa", "gpt2"])
def test_export_then_import_gives_back_the_same_model(tmp_path, megatron_state, cfg):
    from aistack.model.export_hf import export_hf
    from aistack.model.import_hf import megatron_state_dict

    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(3))
    original, expected = build_and_run(cfg, tokens)
    folder = export_hf(original, cfg, VOCAB, tmp_path / "hf", max_shard_bytes=100_000)  # sharded: index read too

    imported = dict(megatron_state_dict(folder))
    weights = {k: v for k, v in original.items() if not k.endswith("_extra_state")}
    assert sorted(imported) == sorted(weights)
    for name, tensor in weights.items():
        rows = VOCAB if name in ("embedding.word_embeddings.weight", "output_layer.weight") else None
        assert torch.equal(imported[name], tensor[:rows]), f"{name} differs after the round trip"

    got = imported_logits(cfg, folder, tokens)
    assert torch.equal(got, expected), "same weights, same computation: bit-identical logits"
    theirs, _ = hf_logits(folder, tokens)
    torch.testing.assert_close(theirs, got, atol=1e-4, rtol=1e-4)


def test_gpt2_finetuned_on_shorter_sequences_keeps_the_first_positions(tmp_path, megatron_state):
    from aistack.model.export_hf import export_hf

    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(4))
    original, expected = build_and_run(GPT2, tokens)
    folder = export_hf(original, GPT2, VOCAB, tmp_path / "hf")  # n_positions 32
    short = GPT2.model_copy(update={"seq_length": 16})
    got = imported_logits(short, folder, tokens[:, :16])
    assert torch.equal(got, expected[:, :16]), "causal: the first 16 positions do not see the rest"


def test_a_model_block_that_does_not_match_config_json_is_refused(tmp_path, megatron_state):
    from aistack.model.export_hf import export_hf
    from aistack.model.import_hf import ModelMismatch, check_model

    original, _ = build_and_run(LLAMA, torch.zeros(1, 4, dtype=torch.long))
    folder = export_hf(original, LLAMA, VOCAB, tmp_path / "hf")
    check_model(folder, LLAMA, VOCAB)  # the exporting model block fits

    wrong = LLAMA.model_copy(update={"num_query_groups": 4, "rotary_base": 10000.0})
    with pytest.raises(ModelMismatch) as err:
        check_model(folder, wrong, 256)
    message = str(err.value)
    assert "key 'model.num_query_groups' = 4 but config.json num_key_value_heads = 2" in message
    assert "key 'model.rotary_base' = 10000.0 but config.json rope_theta = 500000.0" in message
    assert "key 'model.vocab_size' = 256 but config.json vocab_size = 200" in message
    assert str(folder / "config.json") in message
    with pytest.raises(ModelMismatch, match=r"key 'model.arch' = 'gpt2' but config.json model_type = 'llama'"):
        check_model(folder, GPT2, VOCAB)

    # What the recipe cannot express is refused too: HF's tanh GELU is not megatron's exact one.
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="gpt2", n_layer=2, n_embd=64, n_head=4, n_positions=32, activation_function="gelu_new")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelMismatch, match=r"config.json activation_function = 'gelu_new'"):
        check_model(folder, GPT2, VOCAB)


def test_qkv_merge_undoes_the_per_group_split():
    from aistack.model.export_hf import split_qkv
    from aistack.model.import_hf import merge_qkv

    rows = torch.tensor([0.0, 1, 10, 20, 2, 3, 11, 21]).unsqueeze(1)  # [q0 q1 k0 v0 | q2 q3 k1 v1]
    q, k, v = split_qkv(rows, num_heads=4, num_groups=2)
    assert torch.equal(merge_qkv(q, k, v, num_groups=2), rows)
