"""Peer: llm-compressor's SparseGPT / Wanda 2:4 on the embedded default model, run for real (CPU).

Runs inside the llm-compressor virtual environment (default /work/venvs/llmc, created with
`python -m venv --system-site-packages` + `pip install llmcompressor==0.14.0.1`), called by eval/sparsify_eval.py:

    /work/venvs/llmc/bin/python eval/sparsify_llmc.py --method sparsegpt --tokens TOKENS.json --out OUT.safetensors

TOKENS.json holds the calibration token ids egt used (same texts, same tokenizer, same truncation), so both sides
see identical calibration data. The pruned weights are written as an HF-named safetensors file (the tied LM head
omitted), which eval/sparsify_eval.py loads into egt's Transformer and evaluates like every other configuration.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=("sparsegpt", "wanda"), required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--model", required=True, help="HF checkpoint directory of the dense model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-propagate", action="store_true",
                    help="propagate_error=False: every layer calibrated on the dense model's activations (one-shot)")
    a = ap.parse_args()

    import torch
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    import llmcompressor
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    seqs = json.loads(Path(a.tokens).read_text())
    ds = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs]})
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    targets = [r"re:.*layers\.\d+\.(self_attn|mlp)\.\w+_proj$"]
    kw = dict(sparsity=0.5, mask_structure="2:4", targets=targets, ignore=["lm_head"])
    modifier = SparseGPTModifier(**kw) if a.method == "sparsegpt" else WandaPruningModifier(**kw)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=[modifier], num_calibration_samples=len(seqs),
            max_seq_length=max(len(s) for s in seqs), pipeline="sequential",
            propagate_error=not a.no_propagate)
    secs = time.perf_counter() - t0
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, a.out, metadata={"llmcompressor": llmcompressor.__version__, "method": a.method,
                                      "seconds": f"{secs:.1f}",
                                      "propagate_error": str(not a.no_propagate)})
    print(json.dumps({"method": a.method, "llmcompressor": llmcompressor.__version__, "seconds": round(secs, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
