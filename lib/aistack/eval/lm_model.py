"""An aistack checkpoint as an lm-evaluation-harness model: `--model aistack`.

    lm_eval --model aistack --model_args checkpoint=runs/gpt-tiny-abc,batch_size=16 --tasks tinylang_mc

Registered under "aistack" when this module is imported (aistack.eval imports it). The
checkpoint is loaded into a TP=1 PP=1 megatron GPTModel in this one process, whatever
layout it was trained with (distributed checkpoints reshard on load). Scoring follows
lm-eval's HF model: right-padded batches, left truncation to the model's sequence length,
rolling windows for perplexity, greedy generation for generate_until. Logits are cut to
the real vocabulary (megatron pads it for TP divisibility): the distribution is the one
the Hugging Face export (model.export_hf, which drops the padded rows) computes, so both
backends score the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from aistack.eval.source import Source, describe, eod_id, load_gpt


@register_model("aistack")
class AistackLM(TemplateLM):
    def __init__(self, checkpoint: str | None = None, tokenizer: str | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, device: str | None = None, dtype: str = "float32",
                 source: Source | None = None, model: Any = None, **_: Any):
        """`source`: an already described checkpoint; `model`: its GPTModel already loaded (and
        perhaps transformed, e.g. FP8-quantized by the benchmark) instead of loading it again."""
        super().__init__()
        if source is None:
            if checkpoint is None:
                raise ValueError("model_args: checkpoint=PATH (a step_* directory, a checkpoints root or a pretrain run) is required")
            from aistack.eval.source import checkpoint_dirs

            source = describe(checkpoint_dirs(checkpoint)[0], tokenizer=tokenizer)
        if source.tokenizer is None:
            raise ValueError(f"{source.path}: no tokenizer.json (its run's recipe names no data.tokenizer, chat.tokenizer or sequence.tokenizer): pass tokenizer=PATH")
        from tokenizers import Tokenizer

        self.source = source
        self.tokenizer = Tokenizer.from_file(str(source.tokenizer))
        self._eot = eod_id(source.tokenizer)
        bos = _bos_token(Path(source.tokenizer))  # read once: prefix_token_id is asked per document
        self._bos = self.tokenizer.token_to_id(bos) if bos else None
        self._vocab = source.model_cfg.vocab_size or self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.model = model if model is not None else load_gpt(source, device, getattr(torch, dtype))
        self._device = next(self.model.parameters()).device
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 8
        self.max_length = int(max_length or source.model_cfg.seq_length)

    # --- tokens ---------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        """What a rolling log-likelihood's first token is conditioned on: the tokenizer's BOS
        when its tokenizer_config.json names one (a Llama's <s>, as lm-eval's `hf` model does),
        else the end-of-document token."""
        return self._bos if self._bos is not None else self._eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)).ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    # --- the model ------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, batch: list[list[int]]) -> torch.Tensor:
        """[B, T, V] float32 logits of right-padded sequences (causal: padding never leaks left)."""
        from aistack.model import cpu_compat

        width = max(len(s) for s in batch)
        tokens = torch.full((len(batch), width), self._eot, dtype=torch.long)
        for i, seq in enumerate(batch):
            tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        tokens = tokens.to(self._device)
        positions = torch.arange(width, device=self._device).unsqueeze(0).expand_as(tokens)
        with cpu_compat.device_scope():
            out = self.model(tokens, positions, attention_mask=None)
        return out[..., : self._vocab].float()

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_: Any) -> list[tuple[float, bool]]:
        # Longest first (as lm-eval's HF model): batches of similar length, fewer padded tokens.
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs, conts = [], []
            for i in chunk:
                _, context, continuation = requests[i]
                whole = (context + continuation)[-(self.max_length + 1):]
                inputs.append(whole[:-1])
                conts.append(continuation)
            logprobs = F.log_softmax(self.logits(inputs), dim=-1)
            for row, i in enumerate(chunk):
                n, cont = len(inputs[row]), conts[row]
                piece = logprobs[row, n - len(cont): n]
                target = torch.tensor(cont, device=piece.device)
                greedy = bool((piece.argmax(-1) == target).all())
                results[i] = (float(piece.gather(-1, target[:, None]).sum()), greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for request in requests:
            (string,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            total = sum(s for s, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding, one full forward per token (no KV cache: evaluation, not serving)."""
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            # a stop string that is one token of the vocabulary (a chat template's end of turn):
            # decoding drops special tokens, so it is caught by its id
            stop_ids = {self.tokenizer.token_to_id(u) for u in until} - {None}
            max_new = int(kwargs.get("max_gen_toks", 256))
            tokens = self.tok_encode(context)[-max(self.max_length - max_new, 1):]
            generated: list[int] = []
            text = ""
            for _ in range(max_new):
                window = (tokens + generated)[-self.max_length:]
                next_id = int(self.logits([window])[0, -1].argmax())
                if next_id == self._eot or next_id in stop_ids:
                    break
                generated.append(next_id)
                text = self.tok_decode(generated)
                if any(u in text for u in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def _bos_token(tokenizer_json: Path) -> str | None:
    import json

    config = tokenizer_json.with_name("tokenizer_config.json")
    try:
        bos = json.loads(config.read_text()).get("bos_token")
    except (OSError, ValueError):
        return None
    return bos.get("content") if isinstance(bos, dict) else bos
