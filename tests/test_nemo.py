"""NeMo 2 checkpoints without NeMo in aistack's environment.

tests/data/nemo/tiny-llama is a checkpoint written by NeMo 2.7.3's own `llm.import_ckpt`
(nemo_interop/hf_to_nemo.py) from the transformers folder next to it (a random tiny Llama:
GQA, untied, every norm perturbed): aistack reads it with transformers' logits of that
folder. `aistack export --to nemo` writes one that aistack reads back bit for bit; NeMo's
own exporter on it is in test_nemo_interop.py (needs .venv-nemo: `make test-nemo`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aistack.model.export_hf  # noqa: F401  (transformers before megatron's CPU shims)

NEMO = Path(__file__).parent / "data" / "nemo" / "tiny-llama"
NEMO_HF = Path(__file__).parent / "data" / "nemo" / "tiny-llama-hf"
TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def aistack_logits(checkpoint: Path, model: dict | None = None) -> torch.Tensor:
    from aistack.eval.source import describe, load_gpt
    from aistack.model import cpu_compat

    source = describe(checkpoint, model=model)
    net = load_gpt(source)
    with torch.no_grad(), cpu_compat.device_scope():
        positions = torch.arange(TOKENS.shape[1]).unsqueeze(0).expand_as(TOKENS)
        return net(TOKENS, positions, attention_mask=None)[..., :256]


def transformers_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(TOKENS).logits


def test_a_checkpoint_written_by_nemo_has_the_logits_of_the_model_it_was_imported_from():
    from aistack.eval.source import describe

    source = describe(NEMO)
    assert source.format == "nemo" and source.tokenizer == NEMO / "context" / "nemo_tokenizer" / "tokenizer.json"
    cfg = source.model_cfg  # from context/model.yaml alone
    assert (cfg.arch, cfg.num_layers, cfg.hidden_size, cfg.num_query_groups, cfg.ffn_size, cfg.tied_embeddings) == \
        ("llama", 2, 64, 2, 128, False)
    expected = transformers_logits(NEMO_HF)
    assert expected.std() > 0.1, "logits must spread for the comparison to mean something"
    torch.testing.assert_close(aistack_logits(NEMO), expected, atol=1e-5, rtol=1e-5)


def test_a_model_block_unlike_model_yaml_is_named_key_by_key():
    from aistack.kinds.pretrain import ModelConfig
    from aistack.model import nemo

    right = nemo.model_block(NEMO)
    nemo.check_model(NEMO, ModelConfig.model_validate(right))
    wrong = ModelConfig.model_validate({**right, "num_layers": 3, "num_query_groups": 4})
    with pytest.raises(nemo.NemoModelMismatch) as err:
        nemo.check_model(NEMO, wrong)
    message = str(err.value)
    assert "key 'model.num_layers' = 3 but model.yaml config.num_layers = 2" in message
    assert "key 'model.num_query_groups' = 4 but model.yaml config.num_query_groups = 2" in message
    gpt2 = ModelConfig.model_validate({**right, "arch": "gpt2"})
    with pytest.raises(nemo.NemoModelMismatch, match=r"model.arch.*'normalization': 'RMSNorm'"):
        nemo.check_model(NEMO, gpt2)


def test_pretraining_starts_from_a_nemo_checkpoint(tmp_path):
    """checkpoint.load: a NeMo folder, weights only. The step-0 validation loss is the one of a
    start from the transformers folder it was imported from, not a fresh model's."""
    from aistack.launch import launcher
    from aistack.model import nemo
    from aistack.model.dataset import make_tiny_dataset
    from aistack.track.metrics import read_metrics
    from conftest import RECIPES

    data = make_tiny_dataset(tmp_path / "data" / "tiny", vocab_size=256, num_docs=100)
    block = nemo.model_block(NEMO)
    model = [f"model.{k}={v}" for k, v in block.items() if k != "seq_length"] + ["model.vocab_size=256"]
    common = [f"data.paths=[{{path: {data}}}]", "tracking.mode=disabled", "train.steps=1", *model]

    def first_val_loss(name: str, *extra: str) -> float:
        run = launcher.launch(RECIPES / "pretrain" / "gpt-tiny.yaml", [f"output.root={tmp_path / name}", *common, *extra],
                              on="local")
        assert {r.state for r in launcher.wait(run, timeout_s=600)} == {"COMPLETED"}
        return read_metrics(run.run.task_dir("train", 0) / "metrics.jsonl")[0]["val_loss"]

    from_nemo = first_val_loss("nemo", f"checkpoint.load={NEMO}", "checkpoint.load_optimizer=false")
    from_hf = first_val_loss("hf", f"checkpoint.load={NEMO_HF}", "checkpoint.load_optimizer=false")
    from_scratch = first_val_loss("scratch")
    assert from_nemo == pytest.approx(from_hf, abs=1e-5)
    assert from_nemo != pytest.approx(from_scratch, abs=1e-3)


def test_export_to_nemo_reads_back_bit_for_bit(tmp_path):
    """`aistack export RUN --to nemo` on a real 2-step run: weights in NeMo's layout (keys
    under module.), io.json and model.yaml of this config, NeMo's tokenizer folder; aistack
    reads it back with exactly the run's weights."""
    from torch.distributed.checkpoint import FileSystemReader

    from aistack.eval.source import describe, load_gpt
    from aistack.model import checkpoint, nemo
    from aistack.model.dataset import Tokenizer

    result_path = tiny_llama_run(tmp_path, steps=2, extra=["model.rotary_base=500000"])
    vocab = Tokenizer.from_file(tmp_path / "tokenizer.json").vocab_size
    out = tmp_path / "nemo"
    # A process of its own, as on a login node (megatron's checkpoint writer keeps a helper
    # process for the life of the process that saved).
    done = subprocess.run([sys.executable, "-m", "aistack.cli", "export", str(result_path), "--to", "nemo",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "exported" in done.stdout, done.stderr[-3000:]

    assert nemo.is_nemo_checkpoint(out)
    keys = FileSystemReader(str(out / "weights")).read_metadata().state_dict_metadata
    assert "module.decoder.layers.self_attention.linear_qkv.weight" in keys
    io = json.loads((out / "context" / "io.json").read_text())
    items = {name: node.get("value") for name, node in io["objects"]["llama_config_1"]["items"]}
    assert (items["Attr(name='ffn_hidden_size')"], items["Attr(name='rotary_base')"], items["Attr(name='vocab_size')"]) == \
        (96, 500000.0, vocab)
    assert (out / "context" / "nemo_tokenizer" / "tokenizer.json").is_file()

    source = describe(out)
    run_cfg = describe(checkpoint.latest(result_path / "jobs" / "train" / "tasks" / "00000" / "checkpoints")).model_cfg
    same = ("arch", "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_size", "rotary_base",
            "norm_epsilon", "tied_embeddings", "seq_length")
    assert [getattr(source.model_cfg, k) for k in same] == [getattr(run_cfg, k) for k in same]
    want = checkpoint.load_full_state_dict(result_path)
    got = {k: v for k, v in load_gpt(source).state_dict().items() if not k.endswith("_extra_state")}
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def tiny_llama_run(root: Path, steps: int, extra: list[str] = ()) -> Path:
    """A tiny Llama pretrain run (GQA, untied, ffn 96) with its own BPE tokenizer (root/tokenizer.json)."""
    from aistack.data.tokenize import train_bpe
    from aistack.launch import launcher
    from aistack.model.dataset import Tokenizer, make_tiny_dataset
    from conftest import RECIPES

    tok = train_bpe([f"document {i} of a tiny corpus, said twice." for i in range(50)], 300, 1, "<|endoftext|>", [],
                    root / "tokenizer.json")
    vocab = Tokenizer.from_file(tok).vocab_size
    data = make_tiny_dataset(root / "data" / "tiny", vocab_size=vocab, num_docs=100)
    result = launcher.launch(RECIPES / "pretrain" / "gpt-tiny.yaml", [
        f"output.root={root / 'runs'}", f"data.paths=[{{path: {data}}}]", f"data.tokenizer={tok}",
        f"model.vocab_size={vocab}", "model.ffn_hidden_size=96", "tracking.mode=disabled", f"train.steps={steps}",
        *extra], on="local")
    return result.run.path


def test_a_gpt2_run_is_not_written_as_a_llama():
    from aistack.kinds.pretrain import ModelConfig
    from aistack.model.nemo import export_nemo

    with pytest.raises(ValueError, match="model.arch 'gpt2' is not llama"):
        export_nemo(None, ModelConfig(arch="gpt2"), 256, "/nonexistent", "tok.json")


def test_export_to_nemo_of_a_run_without_tokenizer_is_a_named_error(tmp_path, capsys):
    from aistack.cli import main
    from aistack.rundir import RunDir

    run = RunDir(tmp_path / "runs" / "gpt-tiny-0123456789")
    run.path.mkdir(parents=True)
    (run.path / "recipe.yaml").write_text((Path(__file__).parents[1] / "recipes" / "pretrain" / "gpt-tiny.yaml").read_text()
                                          .replace("extends: ../base/defaults.yaml\n", ""))
    assert main(["export", str(run.path), "--to", "nemo"]) == 2
    err = capsys.readouterr().err
    assert "data.tokenizer" in err and "Traceback" not in err


def test_an_evaluation_scores_a_nemo_checkpoint_as_the_folder_it_came_from(tmp_path, monkeypatch):
    """evaluate.checkpoints: a NeMo folder, through aistack's lm-eval model, gives the word
    perplexity lm-eval's own `hf` model gives on the transformers folder it was imported from."""
    from aistack.eval.evaluator import evaluate_pair
    from aistack.kinds.evaluate import EvaluateConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def word_perplexity(checkpoint: Path, backend: str) -> float:
        cfg = EvaluateConfig(checkpoints=[str(checkpoint)], tasks=["tinylang_ppl"], backend=backend, batch_size=8, limit=20)
        assert cfg.checkpoints == [str(checkpoint)]
        metrics = evaluate_pair(cfg, cfg.checkpoints[0], "tinylang_ppl", tmp_path / backend)["metrics"]["tinylang_ppl"]
        return metrics["word_perplexity"]

    ours = word_perplexity(NEMO, "aistack")
    assert ours == pytest.approx(word_perplexity(NEMO_HF, "hf"), rel=1e-4)
    assert ours > 1.0
