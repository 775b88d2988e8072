"""Make a tiny random Llama HF folder (config, safetensors, tokenizer) for interop tests.

Usage: python make_tiny_llama.py OUT_DIR
No hub downloads: the tokenizer is a byte-level BPE with no merges built with `tokenizers`.
"""
import json
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1]
torch.manual_seed(0)
cfg = LlamaConfig(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2, torch_dtype="float32",
)
model = LlamaForCausalLM(cfg)
with torch.no_grad():  # random norm weights (HF inits them to ones), so a lost norm shows up
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1 + 0.1 * torch.randn_like(p))
model.save_pretrained(out, safe_serialization=True)

# 3 special tokens + the first 253 byte-level symbols = 256 ids (matches vocab_size).
specials = ["<unk>", "<s>", "</s>"]
alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())[:253]
vocab = {t: i for i, t in enumerate(specials + alphabet)}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
fast.save_pretrained(out)
print(json.dumps({"hf_dir": out, "params": sum(p.numel() for p in model.parameters()),
                  "vocab": len(fast), "keys": len(model.state_dict())}))
