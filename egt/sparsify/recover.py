"""Recovery distillation after pruning: train the kept values to match the dense model.

Contract:
- `recover(student, teacher, tokenizer, texts, RecoverOptions, progress) -> dict` trains, in place, the float kept
  values (`SparseLinear.values`) of every pruned module of `student` so that its next-token distributions match
  those of `teacher` (the same model before pruning) on `texts`: loss = mean over tokens of KL(teacher || student).
  The masks do not move (pruned positions stay zero), so the plan, the 2-bit indices and the packed format are
  unchanged; everything else in the student (embeddings, norms, dense layers) is frozen. Returns a report (steps,
  tokens seen, first and last losses, seconds).
- Why: one-shot pruning (SparseGPT compensates layer by layer) leaves the 135M default model at KL 1.4 (2:4) to
  1.9 (mix 0.375) nats per token from the dense model; a short end-to-end distillation repairs what the layer-local
  compensation cannot. `egt compress --recover-steps N` runs it between pruning and quantization (the quantizer then
  rounds the recovered kept values).
- Data: the texts are tokenized, joined with the end-of-text token and cut into `seq_len` chunks (every token is
  a training target), shuffled with `seed`; batches cycle over them.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..calibrate import tokenize_texts
from ..transformer import KVCache
from .modules import SparseLinear


@dataclass
class RecoverOptions:
    steps: int = 200
    # AdamW, linear warm-up over `warmup` steps then cosine to zero; 3e-4 beat 1e-4 on the validation KL at 2:4
    # (eval/results/sparsify.md, recovery section)
    lr: float = 3e-4
    warmup: int = 10
    batch: int = 4  # chunks per step
    seq_len: int = 128
    grad_clip: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"recovery steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"recovery learning rate must be > 0, got {self.lr}")
        if self.batch < 1 or self.seq_len < 2:
            raise ValueError(f"recovery batch must be >= 1 and seq_len >= 2, got {self.batch}, {self.seq_len}")


def token_chunks(tokenizer, texts: list[str], seq_len: int, seed: int) -> list[torch.Tensor]:
    """The texts as one token stream (joined by end-of-text) cut into shuffled chunks of `seq_len`."""
    eos = getattr(tokenizer, "eos_token_id", None)
    eos = [] if eos is None else [eos]
    stream: list[int] = []
    for ids in tokenize_texts(tokenizer, texts, max_tokens=4 * seq_len):
        stream += ids.tolist() + eos
    chunks = [torch.tensor(stream[i:i + seq_len]) for i in range(0, len(stream) - seq_len + 1, seq_len)]
    if not chunks:
        raise ValueError(f"recovery texts hold {len(stream)} tokens, fewer than one chunk of {seq_len}")
    random.Random(seed).shuffle(chunks)
    return chunks


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Causal logits [B, T, V] of a training batch. Each layer gets its own cache tensors: slices of one shared
    cache would share a version counter, and autograd refuses a buffer written again after it was read."""
    b, t = ids.shape
    s, kw = model.shape, dict(dtype=model.dtype, device=ids.device)
    cache = KVCache([torch.zeros(b, s.kv_heads, t, s.head_dim, **kw) for _ in range(s.layers)],
                    [torch.zeros(b, s.kv_heads, t, s.head_dim, **kw) for _ in range(s.layers)])
    slots = torch.arange(t, device=ids.device)
    return model(ids, slots.expand(b, t), slots, cache, kv_len=t)


def distill_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(teacher || student), in float32."""
    lt = F.log_softmax(teacher_logits.float(), -1)
    ls = F.log_softmax(student_logits.float(), -1)
    return (lt.exp() * (lt - ls)).sum(-1).mean()


def recover(student, teacher, tokenizer, texts: list[str], opts: RecoverOptions | None = None,
            progress: bool = True) -> dict:
    opts = opts or RecoverOptions()
    opts.validate()
    sparse = [m for m in student.modules() if isinstance(m, SparseLinear)]
    if not sparse:
        raise ValueError("recovery trains float sparse modules, and this model has none (prune it first, "
                         "without --bits: quantization runs after recovery)")
    chunks = token_chunks(tokenizer, texts, opts.seq_len, opts.seed)
    frozen = [p for p in student.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = [m.values.requires_grad_(True) for m in sparse]
    opt = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)

    def lr_at(s: int) -> float:
        if s < opts.warmup:
            return (s + 1) / opts.warmup
        return 0.5 * (1 + math.cos(math.pi * (s - opts.warmup) / max(1, opts.steps - opts.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    teacher.eval()
    was_training = student.training
    student.train()
    from tqdm.auto import tqdm

    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(opts.steps), desc="recovery", disable=not progress, leave=False)
    try:
        for s in bar:
            ids = torch.stack([chunks[(s * opts.batch + j) % len(chunks)] for j in range(opts.batch)])
            ids = ids.to(student.device)
            with torch.no_grad():
                target = logits(teacher, ids)
            loss = distill_kl(target, logits(student, ids))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 4))
            bar.set_postfix(kl=f"{losses[-1]:.3f}")
    finally:
        for v in params:
            v.requires_grad_(False)
        for p in frozen:
            p.requires_grad_(True)
        student.train(was_training)
    k = max(1, min(10, len(losses) // 4))
    return {"options": asdict(opts), "modules": len(sparse), "chunks": len(chunks),
            "tokens_seen": opts.steps * opts.batch * opts.seq_len, "texts": len(texts),
            "kl_first": round(sum(losses[:k]) / k, 4), "kl_last": round(sum(losses[-k:]) / k, 4),
            "losses": losses, "seconds": round(time.perf_counter() - t0, 1)}
