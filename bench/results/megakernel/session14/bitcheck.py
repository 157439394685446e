"""Same model, same inputs: logits of the kernel built from csrc A and from csrc B must be equal bit for bit."""
import sys, torch
sys.path.insert(0, ".")
from bench.megakernel_ab import variant_plan, code_state
from bench.megakernel_check import clone, compress, prefill
from egt.megakernel.profiles import PROFILES
from egt.megakernel.runtime import MegaKernelDecoder
from egt.models import SHAPES, random_model
a, b = sys.argv[1], sys.argv[2]
for name, w in [("qwen2.5-1.5b", "w4a16"), ("qwen2.5-1.5b", "bf16"), ("smollm2-135m", "bf16"), ("llama-3.2-1b", "bf16"),
                ("qwen2.5-0.5b", "w4a16-mix")]:
    model = compress(random_model(name, device="cuda"), w)
    plan = variant_plan(SHAPES[name], w, {"stored": "1"}, PROFILES["h100"])
    decs = {}
    for tag, cs in (("a", a), ("b", b)):
        with code_state(cs):
            decs[tag] = MegaKernelDecoder(model, batch=1, plan=plan)
    gen = torch.Generator(device="cuda").manual_seed(1)
    res = []
    for ctx in (1, 2, 65, 140, 129, 300, 1000, 4000):
        cache = model.setup_cache(1, ctx + 8)
        if ctx > 1:
            prefill(model, cache, torch.randint(0, model.shape.vocab, (1, ctx - 1), device="cuda", generator=gen))
        tok = torch.randint(0, model.shape.vocab, (1,), device="cuda", generator=gen)
        out = {}
        for tag, dec in decs.items():
            c = clone(cache)
            _, lg = dec.step(tok, [ctx - 1], [0], ctx - 1, c)
            out[tag] = (lg.clone(), c)
        same = torch.equal(out["a"][0], out["b"][0])
        kv_same = torch.equal(out["a"][1].k, out["b"][1].k) and torch.equal(out["a"][1].v, out["b"][1].v)
        res.append(f"{ctx}:{'=' if same and kv_same else 'DIFF'}")
        del cache, out
    print(f"bitcheck {name} {w}: " + " ".join(res), flush=True)
    del decs, model
    torch.cuda.empty_cache()
