"""Run llm-compressor's GPTQ (the peer of egt's quantizer) on the default model, for real, on CPU.

Runs in an environment that has llmcompressor==0.14.0.1 (it pins compressed-tensors 0.19.0); egt's own environment
does not need it. `eval/quant_table.py` calls this script through that environment's python, e.g.
    /root/.venvs/llmc/bin/python eval/quant_llmc.py --bits 4 --group 64 --out ~/.cache/egt/llmc/W4A16_G64

What it writes into --out:
    compressed/               llm-compressor's own saved model (compressed-tensors pack-quantized format)
    dequantized.safetensors   every linear's weight after GPTQ (llm-compressor leaves the quantized-dequantized
                              values in `module.weight`), HF names, so egt can evaluate the very same weights
    meta.json                 scheme, quantization args, seconds, bytes of the compressed directory
Calibration: the same texts as egt (`egt.data.calibration_texts` on the IRA ads, n=32, seed 0), <= 256 tokens.
Scheme: the W4A16 preset's arguments (int, symmetric, group strategy) with --bits/--group/--asym. llm-compressor
0.14 cannot use g128 on this model: 6 of its 7 projection kinds are 576 columns wide, which is not a multiple of
128, and its observer reshapes rows into whole groups (it fails even with bypass_divisibility_checks). g64 divides
576 and 1536, and W4 g64 symmetric stores exactly 4 + 16/64 = 4.25 bits per weight (W3 g64: 3.25), the table's two
budgets.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=4, choices=(3, 4, 8))
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--asym", action="store_true", help="asymmetric (default: symmetric, as the W4A16 preset)")
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=256)
    a = p.parse_args(argv)

    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from egt.data import calibration_texts, shared_file
    from egt.models import default_model_dir

    torch.set_num_threads(1)  # shared 2-core machine: one thread avoids OpenMP spin-waits
    src = default_model_dir(progress=False)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    texts = calibration_texts(str(shared_file("ira_facebook_ads.csv")), n=a.samples, seed=0)
    enc = [tok(t, add_special_tokens=False, truncation=True, max_length=a.max_tokens)["input_ids"] for t in texts]
    ds = Dataset.from_dict({"input_ids": enc, "attention_mask": [[1] * len(e) for e in enc]})
    scheme = f"W{a.bits}A16{'_ASYM' if a.asym else ''}_G{a.group}"
    args = QuantizationArgs(num_bits=a.bits, type="int", symmetric=not a.asym, strategy="group", group_size=a.group)
    modifier = GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                            ignore=["lm_head"])
    out = Path(a.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=modifier, num_calibration_samples=len(enc), max_seq_length=a.max_tokens,
            shuffle_calibration_samples=False)
    secs = time.perf_counter() - t0
    weights, qargs = {}, None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and hasattr(mod, "weight_scale"):
            weights[f"{name}.weight"] = mod.weight.detach().float().contiguous().clone()
            qargs = mod.quantization_scheme.weights
    save_file(weights, str(out / "dequantized.safetensors"))
    try:
        model.save_pretrained(out / "compressed", save_compressed=True)
        tok.save_pretrained(out / "compressed")
        nbytes = sum(f.stat().st_size for f in (out / "compressed").glob("*.safetensors"))
    except Exception as e:  # 576 columns are not a multiple of 128; the packer may refuse the partial group
        print(f"llm-compressor could not save its compressed format: {type(e).__name__}: {e}", file=sys.stderr)
        nbytes = None
    meta = {"scheme": scheme, "quantization_args": qargs.model_dump(mode="json") if qargs else None,
            "quantized_linears": len(weights), "seconds": round(secs, 1), "compressed_safetensors_bytes": nbytes,
            "calibration_texts": len(enc), "llmcompressor": __import__("llmcompressor").__version__,
            "compressed_tensors": __import__("compressed_tensors").__version__}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
