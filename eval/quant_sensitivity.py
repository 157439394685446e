"""Which sensitivity metric predicts the end loss? Rank correlation of each metric with measured single-layer KL.

    python eval/quant_sensitivity.py --layers 0,10,20,29 --heldout 12   # CPU, ~25 min on 2 busy shared cores
writes eval/results/quant_sensitivity.json and .md.

For a sample of linear layers of the default model and a few quantization candidates, it
  1. computes every metric of `egt.quant.sensitivity.layer_errors` from calibration statistics (32 IRA ad texts,
     the calibration set of `eval/quant_table.py`), and
  2. measures the mean KL(p_float || p_quantized) of the next-token distribution on held-out ad text
     (`egt.data.heldout_texts`) when that one layer alone is quantized (same quantizer as the metrics).
It reports Spearman's rank correlation between each metric and the measured KL over all (layer, candidate) points
and within each candidate (across layers: what the allocator must get right). The allocator's default metric is
the one that wins here.
Speed: the hidden states entering each sampled layer are cached once, so a measurement runs only the layers from
there to the LM head.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from egt.calibrate import collect_stats, tokenize_texts  # noqa: E402
from egt.data import calibration_texts, heldout_texts, shared_file  # noqa: E402
from egt.models import load_model  # noqa: E402
from egt.plan import LinearPlan  # noqa: E402
from egt.quant.quantizer import CLIP_GRID, fake_quantize  # noqa: E402
from egt.quant.sensitivity import METRICS, layer_errors, output_fisher  # noqa: E402

KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj")
CANDIDATES = (LinearPlan(bits=3, group_size=128, symmetric=False), LinearPlan(bits=4, group_size=-1, symmetric=True))


def spearman(a, b) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


class Runner:
    """Runs the model on held-out texts in length-sorted chunks (little padding, bounded memory).

    `hidden_inputs()` caches the input of every layer per chunk; `logprobs_from(i, states)` runs layers i.. and
    the LM head on those states and returns next-token log-probabilities of the valid positions, [tokens, vocab].
    """

    def __init__(self, model, seqs, chunk: int = 8):
        self.model = model
        seqs = sorted(seqs, key=len)
        self.chunks = []
        for c in range(0, len(seqs), chunk):
            part = seqs[c:c + chunk]
            t = max(len(s) for s in part)
            tokens = torch.zeros(len(part), t, dtype=torch.long)
            valid = torch.zeros(len(part), t, dtype=torch.bool)
            for i, s in enumerate(part):
                tokens[i, : len(s)] = s
                valid[i, : len(s) - 1] = True  # positions whose next token exists
            slots = torch.arange(t)
            # Right padding + causal mask: real tokens never attend to padding.
            mask = (slots.view(1, -1) <= slots.view(-1, 1)).view(1, 1, t, t)
            self.chunks.append((tokens, valid, slots, mask))

    @property
    def valid_tokens(self) -> int:
        return int(sum(v.sum() for _, v, _, _ in self.chunks))

    def targets(self) -> torch.Tensor:
        return torch.cat([tok[:, 1:][valid[:, :-1]] for tok, valid, _, _ in self.chunks])

    def _run(self, i, x, tokens, valid, slots, mask):
        m = self.model
        t = tokens.shape[1]
        cos, sin = m.rope(slots.view(1, -1).expand(tokens.shape[0], -1), x.dtype)
        cache = m.setup_cache(tokens.shape[0], t)
        for j in range(i, len(m.layers)):
            x = m.layers[j](x, cos, sin, cache.k[j], cache.v[j], slots, mask, t)
        return x

    @torch.no_grad()
    def hidden_inputs(self):
        """[per chunk: [input of layer 0, input of layer 1, ...]]"""
        out = []
        m = self.model
        for tokens, valid, slots, mask in self.chunks:
            t = tokens.shape[1]
            x = m.embed_tokens(tokens)
            cos, sin = m.rope(slots.view(1, -1).expand(tokens.shape[0], -1), x.dtype)
            cache = m.setup_cache(tokens.shape[0], t)
            states = []
            for j, layer in enumerate(m.layers):
                states.append(x)
                x = layer(x, cos, sin, cache.k[j], cache.v[j], slots, mask, t)
            out.append(states)
        return out

    @torch.no_grad()
    def logprobs_from(self, i, states=None):
        """Log-probs with layers i.. run on cached inputs (states from hidden_inputs), or the full model (i=0)."""
        m = self.model
        outs = []
        for c, (tokens, valid, slots, mask) in enumerate(self.chunks):
            x = m.embed_tokens(tokens) if states is None else states[c][i]
            x = self._run(i, x, tokens, valid, slots, mask)
            outs.append(F.log_softmax(m.lm_head(m.norm(x)[valid]).float(), -1))
        return torch.cat(outs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="0,3,6,9,12,15,18,21,24,27,29", help="transformer layers to sample")
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--calibration", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--out", default="eval/results/quant_sensitivity.json")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    loaded = load_model("default", dtype=torch.float32, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    layers = [int(x) for x in a.layers.split(",")]
    names = [f"layers.{i}.{k}" for i in layers for k in KINDS]
    calib = calibration_texts(str(shared_file("ira_facebook_ads.csv")), n=a.calibration, seed=0)
    stats = collect_stats(model, tok, calib, modules=names, progress=False)
    fisher = output_fisher(model, tok, calib, names)
    runner = Runner(model, tokenize_texts(tok, heldout_texts(a.heldout, seed=0), a.max_tokens))
    states = runner.hidden_inputs()
    ref = runner.logprobs_from(0, states)
    points = []
    for n in names:
        li = int(n.split(".")[1])
        mod = model.get_submodule(n)
        w0 = mod.weight.detach().clone()
        errs = layer_errors(w0, stats[n], fisher[n], list(CANDIDATES), rows=w0.shape[0])
        for lp, e in zip(CANDIDATES, errs):
            diag = torch.diagonal(stats[n].xtx).float()
            with torch.no_grad():
                mod.weight.copy_(fake_quantize(w0, lp.bits, lp.group_size, lp.symmetric, CLIP_GRID, diag))
                lq = runner.logprobs_from(li, states)
                kl = float((ref.exp() * (ref - lq)).sum(-1).mean())
                mod.weight.copy_(w0)
            points.append({"module": n, "candidate": lp.describe(), "kl": kl, **e})
        print(f"{n}: " + ", ".join(f"{pt['candidate']} KL {pt['kl']:.2e}" for pt in points[-len(CANDIDATES):]),
              flush=True)
    kls = [pt["kl"] for pt in points]
    overall = {m: spearman([pt[m] for pt in points], kls) for m in METRICS}
    within = {}
    for lp in CANDIDATES:
        pts = [pt for pt in points if pt["candidate"] == lp.describe()]
        within[lp.describe()] = {m: spearman([pt[m] for pt in pts], [pt["kl"] for pt in pts]) for m in METRICS}
    best = max(METRICS, key=lambda m: overall[m])
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(["python", "eval/quant_sensitivity.py"] + list(argv if argv is not None else sys.argv[1:])),
           "device": "cpu", "model": "SmolLM2-135M-Instruct (embedded default, weights on a Q4_1 g32 grid)",
           "calibration_texts": len(calib), "heldout_texts": a.heldout, "heldout_tokens": runner.valid_tokens,
           "layers": layers, "candidates": [lp.describe() for lp in CANDIDATES],
           "spearman_all_points": overall, "spearman_within_candidate": within, "best_metric": best,
           "seconds": round(time.perf_counter() - t0, 1), "points": points}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    lines = ["# Which sensitivity metric predicts the end loss?", "",
             f"{res['date']}, `{res['command']}` (CPU). {len(points)} points = {len(names)} linear layers "
             f"(transformer layers {a.layers}, all 7 projections) x {len(CANDIDATES)} candidates; measured value: "
             f"mean KL(float || quantized) of the next-token distribution on {a.heldout} held-out ad texts "
             f"({res['heldout_tokens']} tokens) with that one layer quantized. Spearman rank correlation:", "",
             "| metric | all points | " + " | ".join(f"within {c}" for c in res["candidates"]) + " |",
             "|---|---|" + "---|" * len(CANDIDATES)]
    for m in METRICS:
        lines.append(f"| {m} | {overall[m]:.3f} | " + " | ".join(f"{within[c][m]:.3f}" for c in res["candidates"]) + " |")
    lines += ["", f"Best predictor: **{best}**."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
