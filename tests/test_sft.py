"""SFT: assistant-only loss (exactly zero gradient elsewhere), packing equals unpacked, and a
tiny pretrained GPT finetuned on a synthetic instruction task (reverse a 3-letter word)
answers held-out prompts far better than before. Starting from a Hugging Face folder or at
TP=2 gives the losses of the TP=1 start from the megatron checkpoint; an SFT run exports to
a transformers folder with the same logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# transformers before any megatron parallel state here (cpu_compat.install, see export_hf's imports)
import aistack.model.export_hf  # noqa: F401
import post_fixtures as pf
from aistack.launch import launcher
from aistack.track.metrics import read_metrics
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
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.model import cpu_compat

    init_model_parallel(1, 1)
    set_seeds(0)
    with cpu_compat.device_scope():
        yield
    destroy_model_parallel()


def tiny_model(arch: str = "llama"):
    from aistack.model.gpt import build_gpt
    from aistack.kinds.pretrain import ModelConfig, ParallelConfig

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
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
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
    from aistack.model.dataset import make_tiny_dataset

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
    # the same skill measured by lm-eval: a `chat` data task on words neither SFT nor distillation sees
    scores = {name: lm_eval_exact_match(tmp_path / name, ckpt, task)
              for name, ckpt in (("pretrained", pretrained), ("sft", run.run.task_dir("train", 0) / "checkpoints"))}
    assert scores["pretrained"] <= 0.05 and scores["sft"] >= 0.8, scores
    # the benchmark's quality task (bench.quality.data_tasks): the same task through lm-eval's `hf`
    # model on the HF export, in batches, stopping at the end-of-turn token: the same figure
    bench = bench_exact_match(tmp_path / "bench", run.run.task_dir("train", 0) / "checkpoints", task)
    assert bench == scores["sft"], (bench, scores)
    # `aistack export --to hf` as a serving stack meets it: transformers' own generate on the chat
    # template stops at the end of the turn, and the decoded text is the answer alone
    words = task["held_out"][:20]
    answers, ended = hf_chat_answers(run.run.path, tmp_path / "export", [pf.prompt(w) for w in words])
    assert all(ended), "every answer stopped at the end-of-turn token, not at max_new_tokens"
    assert sum(a == pf.answer(w) for a, w in zip(answers, words)) >= 0.8 * len(words), answers[:5]


def hf_chat_answers(run_dir: Path, out: Path, prompts: list[str]) -> tuple[list[str], list[bool]]:
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aistack.cli import main

    assert main(["export", str(run_dir), "--to", "hf", "--out", str(out)]) == 0
    generation = json.loads((out / "generation_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.eos_token == "<|end|>" and tokenizer.convert_tokens_to_ids("<|end|>") in generation["eos_token_id"]
    answers, ended = [], []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out_ids = model.generate(**ids, max_new_tokens=24, do_sample=False)[0, ids["input_ids"].shape[1]:]
        ended.append(len(out_ids) < 24 and int(out_ids[-1]) in generation["eos_token_id"])
        answers.append(tokenizer.decode(out_ids, skip_special_tokens=True).strip())
    return answers, ended


def _reverse_words(work: Path) -> dict:
    from aistack.post.reverse_task import eval_words

    data = pf.write_jsonl(work / "eval.jsonl", [pf.record(w) for w in eval_words()[:60]])
    return {"reverse_words": {"type": "chat", "data": str(data), "max_gen_toks": 8}}


def lm_eval_exact_match(work: Path, checkpoint: Path, task: dict) -> float:
    from aistack.eval.evaluator import evaluate_pair
    from aistack.kinds.evaluate import EvaluateConfig

    cfg = EvaluateConfig(checkpoints=[str(checkpoint)], tasks=["reverse_words"], tokenizer=str(task["tokenizer"]),
                         data_tasks=_reverse_words(work))
    return evaluate_pair(cfg, cfg.checkpoints[0], "reverse_words", work / "eval")["metrics"]["reverse_words"]["exact_match"]


def bench_exact_match(work: Path, checkpoint: Path, task: dict) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aistack.bench.quality import task_score
    from aistack.eval.evaluator import export_for_hf
    from aistack.eval.source import checkpoint_dirs, describe
    from aistack.kinds.bench import QualityConfig

    source = describe(checkpoint_dirs(checkpoint)[0], tokenizer=str(task["tokenizer"]))
    folder = export_for_hf(source, work / "hf")
    cfg = QualityConfig(task="reverse_words", data_tasks=_reverse_words(work))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()  # float32, as the evaluation
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return task_score(model, tokenizer, cfg.task, None, data_tasks=cfg.data_tasks,
                      chat_tokenizer=source.tokenizer)["exact_match"]


# --- where SFT starts: an HF folder, another TP layout; and its export ------------------------

SHORT = ("train.steps=3", "train.eval_every=3", "train.eval_steps=1", "checkpoint.every=3")


def losses(run, key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run.run.task_dir("train", 0) / "metrics.jsonl") if key in r}


def run_dir_of(checkpoints: Path) -> Path:
    return next(p for p in checkpoints.parents if (p / "recipe.yaml").exists())


@pytest.fixture(scope="module")
def pretrained_hf(tmp_path_factory, pretrained) -> Path:
    """The pretrained run exported with `aistack export RUN --to hf`."""
    from aistack.cli import main

    out = tmp_path_factory.mktemp("pretrained-hf") / "hf"
    assert main(["export", str(run_dir_of(pretrained)), "--to", "hf", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sft_tp1(tmp_path_factory, task, pretrained):
    """3 SFT steps at TP=1 from the megatron checkpoint: the reference."""
    return launcher.launch(SFT, sft_args(tmp_path_factory.mktemp("sft-tp1"), task, pretrained, *SHORT), on="local")


def test_sft_from_a_hugging_face_folder_starts_where_the_megatron_checkpoint_does(tmp_path, task, pretrained_hf, sft_tp1):
    import json

    assert json.loads((pretrained_hf / "config.json").read_text())["num_key_value_heads"] == 2, "GQA on both sides"
    from_hf = launcher.launch(SFT, sft_args(tmp_path, task, pretrained_hf, *SHORT), on="local")
    reference, got = losses(sft_tp1), losses(from_hf)
    assert sorted(got) == [1, 2, 3]
    # Bit-identical weights, same layout, data and optimizer: the same trace, first step included.
    assert got == reference, f"{got} vs {reference}"
    assert losses(from_hf, "val_loss") == losses(sft_tp1, "val_loss")
    log = "".join(p.read_text() for p in from_hf.run.log_dir("train").glob("*_log.out"))
    assert "loaded Hugging Face weights" in log


def test_sft_from_a_hugging_face_folder_refuses_a_different_model_block(tmp_path, task, pretrained_hf):
    from aistack.launch.executor import JobFailed

    with pytest.raises(JobFailed) as err:
        launcher.launch(SFT, sft_args(tmp_path, task, pretrained_hf, *SHORT, "model.num_query_groups=4"), on="local")
    log = "".join(p.read_text() for p in tmp_path.rglob("*_log.err")) + str(err.value)
    assert "key 'model.num_query_groups' = 4 but config.json num_key_value_heads = 2" in log


LAYOUTS = {"tp2": ("parallel.tensor=2", "resources.tasks_per_node=2"),
           "tp2pp2": ("parallel.tensor=2", "parallel.pipeline=2", "resources.tasks_per_node=4")}


@pytest.mark.parametrize("start, layout", [("megatron", "tp2"), ("hf", "tp2pp2")])
def test_sft_over_tensor_and_pipeline_ranks_gives_the_losses_of_tp1(tmp_path, task, pretrained, pretrained_hf, sft_tp1,
                                                                    start, layout):
    """From the same pretrained weights (the megatron checkpoint, or its HF export sharded for
    each rank) the first steps match the single-process run."""
    init = pretrained if start == "megatron" else pretrained_hf
    run = launcher.launch(SFT, sft_args(tmp_path, task, init, *SHORT, *LAYOUTS[layout]), on="local")
    tp, pp = (2, 2) if layout == "tp2pp2" else (2, 1)
    assert run.run.task_result("train", 0)["result"]["layout"] == {"tp": tp, "pp": pp, "dp": 1}
    reference, got = losses(sft_tp1), losses(run)
    assert sorted(got) == [1, 2, 3]
    for step in got:
        assert got[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-4), f"step {step}: {got} vs {reference}"
    assert losses(run, "val_loss")[3] == pytest.approx(losses(sft_tp1, "val_loss")[3], rel=1e-4)


def test_an_sft_run_exports_to_hugging_face_with_the_same_logits(tmp_path, task, sft_tp1):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aistack.cli import main
    from aistack.model.dist.megatron import destroy_model_parallel, init_model_parallel, set_seeds
    from aistack.model import cpu_compat
    from aistack.post.chat import load_chat_tokenizer
    from aistack.post.objectives import load_frozen
    from aistack.recipe import load_recipe

    out = tmp_path / "hf"
    assert main(["export", str(sft_tp1.run.path), "--to", "hf", "--out", str(out)]) == 0
    cfg = load_recipe(sft_tp1.run.recipe_file).recipe.model
    chat = load_chat_tokenizer(task["tokenizer"])
    messages = pf.record("abc", system=True)["messages"]
    ids, _ = chat.encode_chat(messages)
    tokens = torch.as_tensor(ids, dtype=torch.long).unsqueeze(0)
    init_model_parallel(1, 1)
    try:
        with cpu_compat.device_scope():
            set_seeds(0)
            model = load_frozen(cfg, sft_tp1.run.task_dir("train", 0) / "checkpoints", cfg.vocab_size)
            positions = torch.arange(tokens.shape[1]).unsqueeze(0)
            with torch.no_grad():
                expected = model(tokens, positions, attention_mask=None)[..., : cfg.vocab_size]
    finally:
        destroy_model_parallel()
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(tokens).logits
    assert expected.std() > 0.1, "logits must spread for the comparison to mean something"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # The folder is prompted as the model was finetuned: its tokenizer carries the chat template.
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = hf_tok.apply_chat_template(messages, tokenize=False)
    assert text == chat.render(messages) and "<|assistant|>" in text
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids.tolist()


def test_nemo_sft_formats_train_on_the_same_tokens_as_messages(tmp_path, chat):
    # NeMo's {"input", "output"} and {"system", "conversations": [{"from", "value"}]} records
    # (jsonl and parquet) give exactly the tokens and loss mask of the same chat as `messages`.
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from aistack.post.chat import ChatFormatError
    from aistack.post.generate import read_prompts
    from aistack.post.sft_data import read_records, tokenize_records

    chats = [[{"role": "user", "content": "reverse: a b c"}, {"role": "assistant", "content": "c b a"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "reverse: x y"},
              {"role": "assistant", "content": "y x"}, {"role": "user", "content": "reverse: p q"},
              {"role": "assistant", "content": "q p"}]]
    plain = [{"messages": m} for m in chats]
    io = {"input": "reverse: a b c", "output": "c b a"}
    conv = {"system": "Be brief.", "mask": "User", "type": "VALUE_TO_TEXT", "conversations": [
        {"from": "User", "value": "reverse: x y"}, {"from": "Assistant", "value": "y x"},
        {"from": "human", "value": "reverse: p q"}, {"from": "gpt", "value": "q p"}]}
    (tmp_path / "nemo.jsonl").write_text(json.dumps(io) + "\n" + json.dumps(conv) + "\n")
    pq.write_table(pa.Table.from_pylist([io, {"input": "reverse: x y", "output": "y x"}]), tmp_path / "io.parquet")

    def tokens(records):
        examples, _ = tokenize_records(records, chat, 64)
        return [(e.tokens.tolist(), e.loss_mask.tolist()) for e in examples]

    assert tokens(read_records([tmp_path / "nemo.jsonl"])) == tokens(plain)
    io_chat = [{"messages": chats[0]}, {"messages": [chats[1][1], chats[1][2]]}]
    assert tokens(read_records([tmp_path / "io.parquet"])) == tokens(io_chat)
    assert list(read_prompts([str(tmp_path / "nemo.jsonl")]))[1] == chats[1][:-1]

    (tmp_path / "bad.jsonl").write_text(json.dumps({"conversations": [{"from": "Robot", "value": "hi"}]}) + "\n"
                                        + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ChatFormatError, match=r"bad.jsonl line 1: conversations\[0\] = .*Robot"):
        tokenize_records(read_records([tmp_path / "bad.jsonl"]), chat, 64)
    with pytest.raises(ChatFormatError, match=r"bad.jsonl line 2: no conversation.*keys: \['question'\]"):
        tokenize_records(list(read_records([tmp_path / "bad.jsonl"]))[1:], chat, 64)
