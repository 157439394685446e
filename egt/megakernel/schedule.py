"""Schedules and plans: the static decisions baked into one MegaKernel binary, and their JSON form.

Contract:
- `MatvecSchedule` fixes, for one matrix-vector op, the row tile (TR), the stage width along K (TK), the number of
  cp.async pipeline stages, the activation K-split (KS), the warps that share one row (WPR) and the rotation of
  the tile-to-block assignment. `AttnSchedule` fixes the attention split count, the sub-block of positions one
  pass loads, and its block rotation.
- `MegaPlan` bundles the key (model shape, compression plan, GPU profile, batch, dtype), the grid (blocks = the
  profile's SMs, threads), one schedule per op, and what the search learnt (smem report, predicted and measured
  times). `plan_hash` covers exactly what changes the generated code.
- Weight operand kinds (one per op, the same in every layer): `dense-bf16`/`dense-fp16` (rows read in place),
  `dense-bf16-tc`/`dense-fp16-tc` (the same rows on tensor cores), `int4` (the MegaKernel layout of
  `egt.megakernel.operands`: one contiguous chunk per (row tile, K stage) holding
  the stage's packed codes and its (scale, offset) pairs), `int4-tc` (the same chunks with the codes in tensor-core
  fragment order), `int4-nm` (N:4 sparse INT4 chunks with 2-bit positions, N per layer), `int4-nm-tc` (the same
  weights in sparse tensor-core fragments), `int3` (INT3 chunks, or
  INT4 in the layers whose op holds a 4-bit module: bits per layer). A kind changes the stage footprint here and
  the policy the codegen picks, nothing else.
- The validity rules here mirror the static_asserts in csrc/, so an invalid schedule is rejected in Python before
  any compiler runs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from ..models import ModelShape

MATVEC_OPS = ("qkv", "o", "gateup", "down", "lm_head")
MAX_RING = 8  # ring stages at most: one mbarrier each in static shared memory (csrc)


@dataclass(frozen=True)
class MatvecSchedule:
    tr: int = 16
    tk: int = 256
    stages: int = 4
    ksplit: int = 1
    wpr: int = 1
    rot: int = 0

    def rows_per_warp(self, threads: int) -> int:
        """Rows of a tile each warp owns (csrc MvCfg::RPW): the tile's rows over its WPR-warp row slots."""
        return self.tr // (threads // 32 // self.wpr)


@dataclass(frozen=True)
class AttnSchedule:
    splits: int = 1
    sub: int = 128
    rot: int = 0
    min_chunk: int = 256  # cache rows per split at least: short contexts use fewer splits (one: no combine)
    hpi: int = 0  # query heads per work item (a divisor of the GQA group); 0: the whole group
    qk_lanes: int = 1  # lanes sharing one cache row in q.k (shuffle-reduced); 1: one thread per row
    fold: int = 0  # 1: the O projection's staging combines the split partials (no last-arriver combine step)

    def heads_per_item(self, shape: ModelShape) -> int:
        return self.hpi or shape.heads // shape.kv_heads

    def pairs(self, shape: ModelShape, batch: int) -> int:
        """(batch row, kv head, head slice) pairs: attention outputs, each combined over its splits."""
        return batch * shape.kv_heads * (shape.heads // shape.kv_heads // self.heads_per_item(shape))


@dataclass(frozen=True)
class MatvecOp:
    """Shape of one matvec op of the decode step: N outputs, K inputs, NMAT matrices read per output row."""

    name: str
    n: int
    k: int
    nmat: int
    weight_kind: str  # operand kind of its weights, e.g. "dense-bf16"


def matvec_ops(shape: ModelShape, weight_kind: str = "dense-bf16", kinds: dict[str, str] | None = None
               ) -> dict[str, MatvecOp]:
    """The five matvec ops of a decode step; `kinds` overrides the weight kind per op name."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    dims = {"qkv": (q + 2 * kv, shape.hidden, 1), "o": (shape.hidden, q, 1),
            "gateup": (shape.intermediate, shape.hidden, 2), "down": (shape.hidden, shape.intermediate, 1),
            "lm_head": (shape.vocab, shape.hidden, 1)}
    kinds = kinds or {}
    return {name: MatvecOp(name, n, k, nmat, kinds.get(name, weight_kind)) for name, (n, k, nmat) in dims.items()}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


INT4 = "int4"        # INT4 dequantized on CUDA cores (any batch, bf16 or fp16)
INT4_TC = "int4-tc"  # INT4 on tensor cores: mma.m16n8k16 on bf16, 16, 8 or 4 rows a warp, batch <= 16
INT4_KINDS = (INT4, INT4_TC)
INT4_NM = "int4-nm"  # N:4 sparse INT4 (2:4, 1:4, or dense INT4 in a mixed model), N per layer at run time
INT4_NM_TC = "int4-nm-tc"  # the same on tensor cores (mma.sp for N <= 2, as int4-tc for N = 4): bf16, batch <= 16,
#                            16 or 8 rows a warp
DENSE_TC = {"dense-bf16": "dense-bf16-tc", "dense-fp16": "dense-fp16-tc"}  # mma.m16n8k16, 16 rows a warp
TC_KINDS = {INT4: INT4_TC, INT4_NM: INT4_NM_TC, **DENSE_TC}  # the tensor-core variant of a CUDA-core kind
TC_MAX_BATCH = {INT4_TC: 16, INT4_NM_TC: 16, **{tc: 16 for tc in DENSE_TC.values()}}
# Rows a warp may own on tensor cores: one m16n8k16 A fragment is 16 rows x 16 columns, or RPW rows x 16/RPW column
# parts (csrc Q4TC): narrower row tiles let an op of few rows cover every SM, at the same MMAs per weight.
TC_ROWS_PER_WARP = {INT4_TC: (16, 8, 4), INT4_NM_TC: (16, 8), **{tc: (16,) for tc in DENSE_TC.values()}}


def tc_max_batch(kind: str, rpw: int) -> int:
    """Largest batch of a tensor-core kind at RPW rows a warp: the MMA's 8 B columns hold batch rows (16 rows a
    warp: in groups of 8, up to TC_MAX_BATCH) or 16/RPW column parts of each (csrc Q4TC::Acc)."""
    return TC_MAX_BATCH[kind] if rpw == 16 else min(TC_MAX_BATCH[kind], 8 * rpw // 16)


def tc_quad_columns(rpw: int) -> int:
    """Columns of one tensor-core quad (4 k-steps, one 16-byte code vector a lane) for RPW rows a warp."""
    return 64 * (16 // rpw)


INT3 = "int3"        # INT3 (or INT4 where a layer's op holds a 4-bit module), bits per layer at run time
Q4_CHUNK_KINDS = (*INT4_KINDS, INT4_NM, INT4_NM_TC, INT3)  # kinds read from operands.py chunks (the same stride)
Q4_CODES_PER_VEC = 32  # one 16-byte vector of packed codes: 32 INT4 weights, 4 int32 words


def is_dense(kind: str) -> bool:
    return kind.startswith("dense-")


def model_kind(kind: str) -> str:
    """The weight format a plan kind reads (a tensor-core variant reads the same modules as its CUDA-core kind)."""
    return {tc: cuda_core for cuda_core, tc in TC_KINDS.items()}.get(kind, kind)


def model_formats(kinds: dict[str, str]) -> dict[str, str]:
    """The compressed formats behind a plan's per-op kinds: tensor-core variants mapped back to their format, dense
    ops (on either kind of core) left out, as in the model's `runtime.weight_kinds`."""
    return {k: model_kind(v) for k, v in kinds.items() if not is_dense(v)}


def q4_chunk_vecs(nmat: int, tr: int, tk: int) -> tuple[int, int]:
    """(code vectors, scale vectors at most) of one INT4 stage chunk: codes [nmat][tr][tk/32] x 16 B, then one
    (scale, offset) fp16 pair per (matrix, row, group of the stage), room for the finest group (32 columns)."""
    codes = nmat * tr * (tk // Q4_CODES_PER_VEC)
    scales = ceil_div(nmat * tr * (tk // Q4_CODES_PER_VEC) * 4, 16)
    return codes, scales


def compression_label(weights: dict[str, str]) -> str:
    """The plan key's name for a set of per-op weight kinds ("none": every op dense)."""
    if not weights:
        return "none"
    if set(weights) == set(MATVEC_OPS) and set(weights.values()) == {INT4}:
        return "w4a16"
    if set(weights) == set(MATVEC_OPS) and set(weights.values()) == {INT3}:
        return "w3a16"
    return ",".join(f"{k}={v}" for k, v in sorted(weights.items()))


def weight_bytes_per_elem(kind: str, group: int = 128) -> float:
    """Bytes the kernel streams per weight (INT4: the code nibble plus a 4-byte (scale, offset) pair per group;
    N:4 sparse INT4 is costed at 2:4: half the codes, a 2-bit index per kept value; INT3 at 3 bits a code)."""
    if is_dense(kind):
        return 2.0
    if kind in (INT4_NM, INT4_NM_TC):
        return 0.5 * (0.75 + 4.0 / group)
    return (0.375 if kind == INT3 else 0.5) + 4.0 / group


def stage_bytes(op: "MatvecOp", tr: int, tk: int) -> int:
    if is_dense(op.weight_kind):  # the tensor-core kinds pad each row by 16 bytes (csrc DenseTC)
        return op.nmat * tr * (tk // 8 + (op.weight_kind in DENSE_TC.values())) * 16
    if op.weight_kind in Q4_CHUNK_KINDS:
        return 16 * sum(q4_chunk_vecs(op.nmat, tr, tk))
    raise ValueError(f"unknown weight kind {op.weight_kind!r}")


# ---- the shared-memory constraint model (mirrors csrc/mk_matvec.cuh and csrc/mk_attention.cuh) -----------------
def matvec_check(op: MatvecOp, s: MatvecSchedule, threads: int, batch: int = 1) -> str | None:
    """Why this schedule cannot run, or None."""
    nw = threads // 32
    if op.k % s.ksplit or (op.k // s.ksplit) % s.tk or s.tk % 8:
        return "K must split into KS parts of whole TK stages"
    if nw % s.wpr:
        return "WPR must divide the warp count"
    slots = nw // s.wpr
    if s.tr % slots or s.tr // slots < 1:
        return "TR must be a multiple of warps/WPR"
    if s.stages < 2:
        return "at least two stages"
    if op.weight_kind in Q4_CHUNK_KINDS and (s.tk % Q4_CODES_PER_VEC or op.k % Q4_CODES_PER_VEC):
        return "INT4 stages hold whole 32-code vectors: TK and K must be multiples of 32"
    if op.weight_kind in TC_MAX_BATCH:
        rpw, ok = s.rows_per_warp(threads), TC_ROWS_PER_WARP[op.weight_kind]
        step = 16 if is_dense(op.weight_kind) else tc_quad_columns(rpw)  # dense: k-steps; INT4: code-vector quads
        if rpw not in ok or s.tk % step or batch > tc_max_batch(op.weight_kind, rpw):
            most = tc_max_batch(op.weight_kind, rpw) if rpw in ok else TC_MAX_BATCH[op.weight_kind]
            return (f"{op.weight_kind} needs {' or '.join(map(str, ok))} rows a warp, stages of whole {step}-column "
                    f"{'k-steps' if step == 16 else 'quads'} and batch <= {most} at {rpw} rows a warp")
    return None


def matvec_ring_bytes(op: MatvecOp, s: MatvecSchedule) -> int:
    return s.stages * stage_bytes(op, s.tr, s.tk)


def matvec_page_bytes(op: MatvecOp, s: MatvecSchedule, batch: int, threads: int, blocks: int) -> int:
    nw = threads // 32
    rpw = s.rows_per_warp(threads)
    nt = ceil_div(op.n, s.tr)
    maxt = ceil_div(nt, blocks)
    kp = op.k // s.ksplit
    xs = batch * (kp // 8 + (batch > 1)) * 16  # a staged row: kp columns, one 16-byte pad above batch 1 (csrc XR)
    extra = 0  # the policy's floats after the staged part: Q4TC (and S4TC) sum x per 32 columns, S4W a padded copy
    if op.weight_kind in (INT4_TC, INT4_NM_TC):
        extra = batch * kp // 32
    elif op.weight_kind == INT4_NM:
        extra = batch * (kp + kp // 16)
    red = nw * rpw * op.nmat * batch if s.wpr > 1 else 0
    acc = maxt * s.tr * batch * op.nmat if s.ksplit > 1 else 0
    return xs + 4 * (extra + red + acc)


def attn_page_bytes(shape: ModelShape, a: AttnSchedule, threads: int) -> int:
    g = a.heads_per_item(shape)
    hd = shape.head_dim
    tg = threads // (hd // 2)
    krow = hd + 8
    off = 4 * g * hd + 8 * hd + 4 * g * a.sub
    off += ((4 * (3 * g + 1) + 15) // 16) * 16
    off += 4 * tg * g * hd
    return off + 2 * 2 * a.sub * krow


def static_smem_bytes(batch: int, threads: int, residual_rows: int = 0) -> int:
    """The kernel's static shared variables, rounded up to the 128-byte alignment of the dynamic part after them."""
    raw = batch * 8 + (threads // 32) * batch * 8 + 16 + residual_rows * batch * 2 + 8 * MAX_RING
    return ceil_div(raw, 128) * 128


def attn_check(shape: ModelShape, a: AttnSchedule, threads: int) -> str | None:
    if a.sub > threads:
        return "SUB must not exceed the thread count"
    if threads % (shape.head_dim // 2):
        return "threads must be a multiple of head_dim/2"
    group = shape.heads // shape.kv_heads
    if a.hpi < 0 or group % a.heads_per_item(shape):
        return "heads per item must divide the GQA group"
    if a.heads_per_item(shape) > threads // 32:
        return "more heads per item than warps"
    if a.qk_lanes not in (1, 2, 4, 8, 16, 32) or (shape.head_dim // 8) % a.qk_lanes:
        return "q.k lanes must be a power of two dividing head_dim/8"
    if a.fold not in (0, 1):
        return "fold is 0 or 1"
    return None


@dataclass
class MegaPlan:
    model: ModelShape
    batch: int
    profile: str
    dtype: str = "bf16"
    compression: str = "none"  # label of the weight formats: "none" (all dense), "w4a16", ...
    weights: dict[str, str] = field(default_factory=dict)  # op -> weight kind where not dense-{dtype}
    prefetch_kb: int = 48  # weight bytes a block issues for the next op before waiting on its dependency
    l2_ahead_kb: int = 0  # sm_90: KB of the op after the next one a block asks into L2 early (0: none)
    early_gateup: bool = False  # blocks without attention items prefill gate/up's first stages during attention
    bulk_copy: bool = False  # sm_90: stream the weights with cp.async.bulk + mbarriers (else cp.async; K/V: cp.async)
    compact_code: bool = True  # small code: rolled once-per-op loops (csrc MK_COLD_LOOP, MK_VEC_LOOP)
    threads: int = 512
    blocks: int = 132
    ops: dict[str, MatvecSchedule] = field(default_factory=dict)
    attn: AttnSchedule = field(default_factory=AttnSchedule)
    smem: dict = field(default_factory=dict)  # filled by smem_report()
    predicted_ms: float | None = None
    measured_ms: float | None = None
    notes: dict = field(default_factory=dict)

    # ---- identity ----------------------------------------------------------------------------------------------
    def key(self) -> str:
        """What the plan is for (model shape, weight formats, dtype, GPU, batch), not how it runs them: a kernel
        variant of a format (INT4 on tensor cores) is the search's choice inside one key."""
        m = self.model
        formats = compression_label(model_formats(self.weights))
        return (f"{m.name}|h{m.hidden}i{m.intermediate}l{m.layers}q{m.heads}kv{m.kv_heads}d{m.head_dim}v{m.vocab}"
                f"|{formats}|{self.dtype}|{self.profile}|b{self.batch}")

    def codegen_dict(self) -> dict:
        """Exactly the fields that change the generated code."""
        m = asdict(self.model)
        return {"model": {k: m[k] for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim",
                                             "vocab", "rms_eps", "qkv_bias", "qk_norm")},
                "batch": self.batch, "dtype": self.dtype, "compression": self.compression,
                "weights": dict(sorted(self.weights.items())), "prefetch_kb": self.prefetch_kb,
                # only when set, so that plans without it keep their hashes (build cache, stored plans)
                **({"l2_ahead_kb": self.l2_ahead_kb} if self.l2_ahead_kb else {}),
                **({"early_gateup": True} if self.early_gateup else {}),
                "bulk_copy": self.bulk_copy, "compact_code": self.compact_code,
                "threads": self.threads,
                "blocks": self.blocks, "ops": {k: asdict(v) for k, v in sorted(self.ops.items())},
                "attn": asdict(self.attn)}

    def plan_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.codegen_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def residual_rows(self) -> int:
        """Rows of the residual a block preloads for the o/down epilogues (its largest tile range)."""
        ops = self.matvec_op_table()
        return max(ceil_div(ceil_div(ops[n].n, self.ops[n].tr), self.blocks) * self.ops[n].tr for n in ("o", "down")
                   if n in self.ops)

    # ---- shared memory ------------------------------------------------------------------------------------------
    def matvec_op_table(self) -> dict[str, MatvecOp]:
        return matvec_ops(self.model, f"dense-{self.dtype}", self.weights)

    def smem_bytes(self, ksplit_override: int | None = None) -> dict:
        ops = self.matvec_op_table()
        ring = page = 0
        per_op = {}
        for name, op in ops.items():
            s = self.ops[name]
            if ksplit_override is not None:
                s = MatvecSchedule(s.tr, s.tk, s.stages, ksplit_override, s.wpr, s.rot)
            r = matvec_ring_bytes(op, s)
            pg = matvec_page_bytes(op, s, self.batch, self.threads, self.blocks)
            per_op[name] = {"ring": r, "page": pg}
            ring, page = max(ring, r), max(page, pg)
        ap = attn_page_bytes(self.model, self.attn, self.threads)
        per_op["attention"] = {"ring": 0, "page": ap}
        page = max(page, ap)
        st = static_smem_bytes(self.batch, self.threads, self.residual_rows())
        return {"ring": ring, "page": page, "static": st, "dynamic": ring + page, "peak": ring + page + st,
                "per_op": per_op}

    def smem_report(self) -> dict:
        """Peak shared memory of this plan, and of the same plan with every K-split undone (KS=1)."""
        with_ks = self.smem_bytes()
        without = self.smem_bytes(ksplit_override=1)
        self.smem = {"peak": with_ks["peak"], "peak_without_ksplit": without["peak"], "ring": with_ks["ring"],
                     "page": with_ks["page"], "per_op": with_ks["per_op"]}
        return self.smem

    def check(self, smem_limit: int) -> list[str]:
        errs = []
        for name, op in self.matvec_op_table().items():
            if name not in self.ops:
                errs.append(f"{name}: no schedule")
                continue
            e = matvec_check(op, self.ops[name], self.threads, self.batch)
            if e:
                errs.append(f"{name}: {e}")
        e = attn_check(self.model, self.attn, self.threads)
        if e:
            errs.append(f"attention: {e}")
        if not errs:
            peak = self.smem_bytes()["peak"]
            if peak > smem_limit:
                errs.append(f"shared memory {peak} B exceeds the profile's {smem_limit} B per block")
        return errs

    # ---- JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"key": self.key(), "plan_hash": self.plan_hash(), "model": asdict(self.model), "batch": self.batch,
                "profile": self.profile, "dtype": self.dtype, "compression": self.compression,
                "weights": self.weights, "prefetch_kb": self.prefetch_kb, "l2_ahead_kb": self.l2_ahead_kb,
                "early_gateup": self.early_gateup,
                "bulk_copy": self.bulk_copy,
                "compact_code": self.compact_code,
                "threads": self.threads, "blocks": self.blocks,
                "ops": {k: asdict(v) for k, v in self.ops.items()}, "attn": asdict(self.attn), "smem": self.smem,
                "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: dict) -> "MegaPlan":
        names = {f.name for f in fields(ModelShape)}
        model = ModelShape(**{k: v for k, v in d["model"].items() if k in names})
        return cls(model=model, batch=d["batch"], profile=d["profile"], dtype=d.get("dtype", "bf16"),
                   compression=d.get("compression", "none"), weights=dict(d.get("weights", {})),
                   prefetch_kb=d.get("prefetch_kb", 48), l2_ahead_kb=d.get("l2_ahead_kb", 0),
                   early_gateup=d.get("early_gateup", False),
                   bulk_copy=d.get("bulk_copy", False),
                   compact_code=d.get("compact_code", True),
                   threads=d["threads"], blocks=d["blocks"],
                   ops={k: MatvecSchedule(**v) for k, v in d["ops"].items()}, attn=AttnSchedule(**d["attn"]),
                   smem=d.get("smem", {}), predicted_ms=d.get("predicted_ms"), measured_ms=d.get("measured_ms"),
                   notes=d.get("notes", {}))
