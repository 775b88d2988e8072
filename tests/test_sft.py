"""SFT: assistant-only loss (exactly zero gradient elsewhere), packing equals unpacked, and a
tiny pretrained GPT finetuned on a synthetic instruction task (reverse a 3-letter word)
answers held-out prompts far better than before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import post_fixtures as pf
from aistack.launch import launcher
from conftest import RECIPES

SFT = RECIPES / "sft" / "gpt-tiny-chat.yaml"
PRETRAIN = RECIPES / "pretrain" / "gpt-tiny.yaml"


@pytest.fixture(scope="session")
def task(tmp_path_factory) -> dict:
    return pf.make_task(tmp_path_factory.mktemp("reverse"))


@pytest.fixture(scope="session")
def chat(task):
    from aistack.post.chat import load_chat_tokenizer

    return load_chat_tokenizer(task["tokenizer"])


@pytest.fixture
def megatron_one_rank():
    from aistack.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.model import cpu_compat

    init_model_parallel(1, 1)
    set_seeds(0)
    with cpu_compat.device_scope():
        yield
    destroy_model_parallel()


def tiny_model(arch: str = "llama"):
    from aistack.model.gpt import build_gpt
    from aistack.recipe.kinds.pretrain import ModelConfig, ParallelConfig

    cfg = ModelConfig(arch=arch, num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, vocab_size=384)
    return build_gpt(cfg, ParallelConfig(), pre_process=True, post_process=True, vocab_size=384)


def conversations(chat, n: int, seed: int = 0):
    from aistack.post.sft_data import tokenize_records

    train_words, _ = pf.words()
    rng = np.random.default_rng(seed)
    records = [pf.record(train_words[i], system=bool(i % 2)) for i in rng.choice(len(train_words), n, replace=False)]
    examples, _ = tokenize_records(records, chat, seq_length=64)
    return examples


def test_template_masks_exactly_the_assistant_turns(chat):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "reverse: a b c"},
                {"role": "assistant", "content": "c b a"}, {"role": "user", "content": "reverse: d e f"},
                {"role": "assistant", "content": "f e d"}]
    ids, mask = chat.encode_chat(messages)
    trained = chat.tokenizer.decode(ids[mask].tolist(), skip_special_tokens=False)
    assert trained == "c b a<|end|>f e d<|end|>", "answers and their end-of-turn, nothing of the prompts"
    assert chat.template_name == "default"


def test_tokenizer_with_its_own_chat_template_is_used(tmp_path, task):
    import json
    import shutil

    from aistack.post.chat import load_chat_tokenizer

    shutil.copy(task["tokenizer"], tmp_path / "tokenizer.json")
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    own = load_chat_tokenizer(tmp_path)
    assert own.template_name == "tokenizer"
    ids, mask = own.encode_chat([{"role": "user", "content": "reverse: a b c"}, {"role": "assistant", "content": "c b a"}])
    # The generation prompt's closing space merges with the answer's first letter (" c"): trained.
    assert own.tokenizer.decode(ids[mask].tolist()) == " c b a\n"
    assert not mask[: len(own.encode_prompt([{"role": "user", "content": "reverse: a b c"}])) - 1].any()


def test_masked_tokens_get_exactly_zero_gradient(chat, megatron_one_rank):
    from aistack.model.train import lm_forward_step
    from aistack.post.sft_data import SFTRows, pack_rows

    model = tiny_model()
    rows = SFTRows(pack_rows(conversations(chat, 12), 64, chat.pad_id, packing=True, seed=0), 4, 4, 1, 0, packing=True)
    batch = rows.batch([0, 1, 2, 3])
    captured = {}

    def keep_logits(_module, _inputs, output):  # returns None: the output is left as it is
        output[0].retain_grad()
        captured["logits"] = output[0]

    model.output_layer.register_forward_hook(keep_logits)
    output, loss_func = lm_forward_step(iter([batch]), model)
    loss_func(output)[0].backward()
    grad = captured["logits"].grad.transpose(0, 1).abs().sum(-1)  # [b, s]: |d loss / d logits| per position
    mask = batch["loss_mask"].bool()
    assert mask.any() and (~mask).any()
    assert torch.all(grad[~mask] == 0), "prompt, system and padding positions contribute exactly nothing"
    assert torch.all(grad[mask] > 0)
    # ... and no gradient reaches a weight through a masked position either: perturbing the
    # labels there changes nothing.
    batch2 = {**batch, "labels": torch.where(mask, batch["labels"], (batch["labels"] + 7) % 280)}
    out2, loss_func2 = lm_forward_step(iter([batch2]), model)
    assert loss_func2(out2)[0].item() == loss_func(output)[0].item()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # RoPE (relative) and learned absolute positions
def test_packing_gives_the_loss_of_the_unpacked_batch(chat, megatron_one_rank, arch):
    from aistack.post.sft_data import SFTRows, pack_rows

    model = tiny_model(arch)
    model.eval()
    examples = conversations(chat, 10, seed=1)
    packed = SFTRows(pack_rows(examples, 64, chat.pad_id, packing=True, seed=0), 1, 1, 1, 0, packing=True)
    padded = SFTRows(pack_rows(examples, 64, chat.pad_id, packing=False, seed=0), 1, 1, 1, 0, packing=False)
    assert packed.num_rows < padded.num_rows == 10, "several conversations share a row"

    def token_loss_sum(rows):
        batch = rows.batch(list(range(rows.num_rows)))
        mask = batch.get("attention_mask")
        with torch.no_grad():
            per_token = model(batch["tokens"], batch["position_ids"], attention_mask=mask, labels=batch["labels"])
        return float((per_token * batch["loss_mask"]).sum()), float(batch["loss_mask"].sum())

    (packed_sum, packed_n), (padded_sum, padded_n) = token_loss_sum(packed), token_loss_sum(padded)
    assert packed_n == padded_n
    assert packed_sum / packed_n == pytest.approx(padded_sum / padded_n, rel=1e-5)
    # Without the block mask the conversations would see each other: the loss changes.
    batch = packed.batch(list(range(packed.num_rows)))
    with torch.no_grad():
        leaky = model(batch["tokens"], batch["position_ids"], attention_mask=None, labels=batch["labels"])
    assert float((leaky * batch["loss_mask"]).sum()) != pytest.approx(packed_sum, rel=1e-4)


def test_chat_errors_name_the_file_and_record(tmp_path, chat):
    from aistack.post.chat import ChatFormatError, load_chat_tokenizer
    from aistack.post.sft_data import read_records, tokenize_records

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    with pytest.raises(ChatFormatError, match=r"bad.jsonl line 2: messages\[0\]"):
        tokenize_records(read_records([bad]), chat, 64)
    from aistack.data.tokenize import train_bpe

    plain = train_bpe(["hello world"] * 10, 270, 1, "<|endoftext|>", [], tmp_path / "plain.json")
    with pytest.raises(ChatFormatError, match=r"needs the special tokens"):
        load_chat_tokenizer(plain)


# --- the instruction task, end to end ----------------------------------------------------------


def held_out_accuracy(checkpoint: Path, task: dict, n: int = 60) -> tuple[float, list[str]]:
    from aistack.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.model import cpu_compat
    from aistack.post.chat import load_chat_tokenizer
    from aistack.post.generate import generate
    from aistack.post.objectives import load_frozen
    from aistack.recipe import load_recipe

    cfg = load_recipe(SFT).recipe.model
    chat = load_chat_tokenizer(task["tokenizer"])
    init_model_parallel(1, 1)
    try:
        with cpu_compat.device_scope():
            set_seeds(0)
            model = load_frozen(cfg, checkpoint, cfg.vocab_size)
            answers = [generate(model, chat, [{"role": "user", "content": pf.prompt(w)}], 8, cfg.seq_length)
                       for w in task["held_out"][:n]]
    finally:
        destroy_model_parallel()
    correct = sum(a.strip() == pf.answer(w) for a, w in zip(answers, task["held_out"][:n]))
    return correct / n, answers[:5]


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A briefly pretrained tiny GPT (vocab 512): the starting point of the finetune."""
    from aistack.model.data import make_tiny_dataset

    root = tmp_path_factory.mktemp("pretrained")
    data = make_tiny_dataset(root / "data" / "tiny", vocab_size=512, num_docs=200)
    run = launcher.launch(PRETRAINED_RECIPE, [f"output.root={root}", f"data.paths=[{{path: {data}}}]", "tracking.mode=disabled",
                                              "train.steps=10", "train.eval_every=10"], on="local")
    return run.run.task_dir("train", 0) / "checkpoints"


PRETRAINED_RECIPE = PRETRAIN


def sft_args(root: Path, task: dict, init: Path, *extra: str) -> list[str]:
    return [f"output.root={root}", f"data.train=[{task['train']}]", f"data.tokenizer={task['tokenizer']}",
            "tracking.mode=disabled", f"checkpoint.load={init}", *extra]


def test_finetuned_model_answers_held_out_prompts(tmp_path, task, pretrained):
    before, _ = held_out_accuracy(pretrained, task)
    run = launcher.launch(SFT, sft_args(tmp_path, task, pretrained, "train.steps=250", "train.eval_every=125"), on="local")
    result = run.run.task_result("train", 0)["result"]
    after, samples = held_out_accuracy(run.run.task_dir("train", 0) / "checkpoints", task)
    assert before <= 0.05, f"the pretrained model cannot do the task: {before}"
    assert after >= 0.8, f"held-out accuracy after SFT {after}: {samples}"
    assert result["data"]["chat_template"] == "default" and result["data"]["valid_conversations"] > 0
    assert result["val_loss"] < 0.2
