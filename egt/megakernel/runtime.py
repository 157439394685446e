"""Load a built MegaKernel and run decode steps over a model's own weights and KV cache.

Contract:
- `MegaKernelDecoder(model, batch)` finds (or searches) the plan for (model shape, batch, profile), builds or
  reuses the binary, loads it with ctypes and refuses a grid that the occupancy API says cannot be co-resident
  (`MegaKernelError`). Weight kinds per op come from the model (`weight_kinds`): bf16/fp16 `nn.Linear` weights are
  read in place; 3/4-bit `QuantLinear` and 4-bit N:4 `SparseQuantLinear` weights are repacked once into the
  kernel's chunks (`operands.py`, a second copy on the GPU). Any other module kind (INT8, 3-bit sparse), or two
  kinds within one op that no kind combines, is refused.
- `step(tokens, rope_pos, attn_start, slot, cache)` is one launch on the current stream: it appends this step's
  K/V at cache row `slot` for every batch row, attends rows attn_start[b]..slot, writes float32 logits [B, V]
  and the greedy next token. Inputs are copied into the decoder's device buffers with stream-ordered copies.
- `generate(tokens, rope_pos, attn_start, slot, cache, steps)` runs `steps` greedy steps with one host sync: the
  launches are queued back to back and each feeds its argmax to the next on the device (RoPE position + 1, cache
  row + 1). It returns the tokens [steps, B]; the logits buffer holds the last step's. A stop token does not end
  the run: the caller cuts after it. (One launch per step costs under 1% here: a loop over the steps inside one
  launch measured no faster on an H100, bench/results/megakernel/ab_h100.md run 43.)
- `check()` waits for the stream with a host-side timeout and raises `MegaKernelTimeout` when the kernel did not
  finish, or when the kernel's own dependency timeout fired (a dependency never arrived): a hang becomes an
  error, and the counters are reset so the decoder stays usable.
- The torch custom op `egt::megakernel_decode` runs `step` on a registered decoder, so any torch-based engine
  can call the step (see `op()`).
"""
from __future__ import annotations

import ctypes
import struct
import threading
import time

import torch

from .codegen import BuildError, build, counter_layout, scratch_layout
from .operands import nm_chunks, q3_chunks, q4_chunks
from .profiles import get_profile
from .schedule import INT3, INT4, INT4_KINDS, INT4_NM, INT4_NM_TC, INT4_TC, Q4_CHUNK_KINDS, MegaPlan, model_formats
from .search import PlanStore, plan_for

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


class MegaKernelError(RuntimeError):
    """The MegaKernel cannot run this model/plan here (not co-resident, unsupported model, launch failure)."""


OP_MODULES = {"qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "o": ("self_attn.o_proj",),
              "gateup": ("mlp.gate_proj", "mlp.up_proj"), "down": ("mlp.down_proj",)}


def module_kind(mod, dtype: torch.dtype) -> str:
    from ..quant.linear import QuantLinear
    from ..sparsify.modules import SparseQuantLinear

    if type(mod) is torch.nn.Linear and mod.weight.dtype == dtype:
        return f"dense-{DTYPE_NAMES[dtype]}"
    if isinstance(mod, QuantLinear) and mod.bits in (3, 4):
        return INT4 if mod.bits == 4 else INT3
    if isinstance(mod, SparseQuantLinear) and mod.bits == 4:
        return INT4_NM
    return f"{type(mod).__name__}({getattr(mod, 'plan', None) and mod.plan.describe()})"


def weight_kinds(model, dtype: torch.dtype) -> dict[str, str]:
    """Weight kind per matvec op (only those not dense); one kind per op in every layer, or MegaKernelError. Two
    kinds carry dense INT4 layers beside their own, so one binary runs a mixed model: an op with N:4 sparse INT4 in
    some layers is `int4-nm`, one with INT3 in some layers (or some of its matrices) is `int3`."""
    dense = f"dense-{DTYPE_NAMES[dtype]}"
    found: dict[str, set[str]] = {op: set() for op in (*OP_MODULES, "lm_head")}
    for layer in model.layers:
        for op, names in OP_MODULES.items():
            found[op].update(module_kind(layer.get_submodule(n), dtype) for n in names)
    found["lm_head"].add(module_kind(model.lm_head, dtype))
    out = {}
    for op, ks in found.items():
        for mixed in (INT4_NM, INT3):
            if mixed in ks:
                ks = ks - {INT4}
        bad = ks - {dense, INT4, INT4_NM, INT3}
        if bad or len(ks) > 1 or (op == "lm_head" and INT4_NM in ks):
            raise MegaKernelError(
                f"{op}: the MegaKernel reads {dense}, 3/4-bit QuantLinear or (in the layers) 4-bit N:4 "
                f"SparseQuantLinear weights, one kind per op in every layer (INT4 may join INT3 or N:4 layers); "
                f"this model has {sorted(ks)} (INT8 and 3-bit sparse weights are not in the MegaKernel yet)")
        if ks != {dense}:
            out[op] = ks.pop()
    return out


class MegaKernelTimeout(MegaKernelError):
    """A launch did not finish in time: a dependency never arrived (deadlock) or the GPU is oversubscribed."""


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else int(t.data_ptr())


class MegaKernelDecoder:
    def __init__(self, model, batch: int = 1, profile: str | None = None, plan: MegaPlan | None = None,
                 store: PlanStore | None = None, timeout_s: float = 10.0, kernel_timeout_s: float = 2.0,
                 trace_layer: int | None = None):
        if not torch.cuda.is_available():
            raise MegaKernelError("the MegaKernel needs a CUDA GPU")
        shape = model.shape
        if shape.qk_norm:
            raise MegaKernelError("qk_norm models (Qwen3) are not supported by the MegaKernel yet")
        w = model.embed_tokens.weight
        if w.dtype not in DTYPE_NAMES or w.device.type != "cuda":
            raise MegaKernelError(f"MegaKernel needs bf16/fp16 CUDA weights, got {w.dtype} on {w.device}")
        self.model, self.batch = model, batch
        self.device = w.device
        self.dtype = w.dtype
        kinds = weight_kinds(model, w.dtype)
        prof = get_profile(profile)
        self.profile = prof
        self.plan = plan or plan_for(shape, batch, prof, DTYPE_NAMES[w.dtype], store, weights=kinds)
        if self.plan.batch != batch or self.plan.dtype != DTYPE_NAMES[w.dtype]:
            raise MegaKernelError(f"plan is for batch {self.plan.batch}/{self.plan.dtype}, not {batch}/{DTYPE_NAMES[w.dtype]}")
        if model_formats(self.plan.weights) != kinds:
            raise MegaKernelError(f"plan is for weight kinds {self.plan.weights or 'dense'}, the model has {kinds or 'dense'}")
        errs = self.plan.check(prof.smem_per_block)
        if errs:
            raise MegaKernelError("plan does not fit profile " + prof.name + ": " + "; ".join(errs))
        try:
            self.lib_path = build(self.plan, trace_layer=trace_layer)
        except BuildError as e:
            raise MegaKernelError(str(e)) from e
        with torch.cuda.device(self.device):
            self.lib = ctypes.CDLL(str(self.lib_path))
            self.lib.egt_mk_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            self.lib.egt_mk_info.argtypes = [ctypes.c_void_p]
            self.lib.egt_mk_error_string.restype = ctypes.c_char_p
            info = (ctypes.c_longlong * 10)()
            r = self.lib.egt_mk_info(info)
            if r:
                raise MegaKernelError(f"kernel setup failed: {self.lib.egt_mk_error_string(r).decode()} "
                                      f"(needs {self.plan.smem_bytes()['dynamic']} B dynamic shared memory)")
            self.info = {k: int(info[i]) for i, k in enumerate(
                ["smem_dynamic", "threads", "blocks", "blocks_per_sm", "sms", "regs", "local_bytes", "smem_static",
                 "attr_result", "gateup_early_stages"])}
            if self.info["blocks_per_sm"] * self.info["sms"] < self.info["blocks"]:
                raise MegaKernelError(
                    f"grid of {self.info['blocks']} blocks is not co-resident on this GPU "
                    f"({self.info['sms']} SMs x {self.info['blocks_per_sm']} blocks/SM): refusing to launch a "
                    "persistent kernel that would deadlock")
        self._setup_buffers()
        if trace_layer is not None:
            self.trace = torch.zeros(self.plan.blocks, 32, dtype=torch.int64, device=self.device)
        self.timeout_s = timeout_s
        self.kernel_timeout_ns = int(kernel_timeout_s * 1e9)
        self._launches = 0
        self._lock = threading.Lock()

    # ---- buffers --------------------------------------------------------------------------------------------------
    def _dense(self, t: torch.Tensor | None) -> int:
        if t is None:
            return 0
        if t.dtype != self.dtype or not t.is_contiguous() or t.device != self.device:
            raise MegaKernelError("every dense weight must be a contiguous tensor of one dtype on one GPU")
        if t.data_ptr() % 16:
            raise MegaKernelError("weights must be 16-byte aligned")
        return _ptr(t)

    def _q4(self, op: str, mats) -> tuple[int, int, int]:
        """Chunk buffer, log2 scale granularity and format byte (N kept of 4 for int4-nm, code bits for int3) of a
        chunked op in one layer (the buffer kept alive here)."""
        s = self.plan.ops[op]
        kind = self.plan.weights[op]
        try:
            if kind in (INT4_NM, INT4_NM_TC):
                buf, lg, fmt = nm_chunks(mats, s.tr, s.tk, s.ksplit, "tc" if kind == INT4_NM_TC else "rows",
                                         s.rows_per_warp(self.plan.threads))
            elif kind == INT3:
                buf, lg, fmt = q3_chunks(mats, s.tr, s.tk, s.ksplit)
            else:
                layout = "tc" if kind == INT4_TC else "rows"
                (buf, lg), fmt = q4_chunks(mats, s.tr, s.tk, s.ksplit, layout, s.rows_per_warp(self.plan.threads)), 4
        except ValueError as e:
            raise MegaKernelError(f"{op}: {e}") from e
        self._chunks.append(buf)
        return _ptr(buf), lg, fmt

    def _setup_buffers(self):
        m, dev, B = self.model, self.device, self.batch
        s = m.shape
        k = self.plan.weights
        self._chunks: list[torch.Tensor] = []
        # bias stays float32 in a QuantLinear; the QKV epilogue reads it in the weights' dtype, as the torch path adds it
        self._biases = []

        def bias(mod):
            if mod.bias is None:
                return 0
            t = mod.bias.detach().to(self.dtype).contiguous()
            self._biases.append(t)
            return _ptr(t)

        ptrs = []
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            row = [0] * 14  # csrc/mk_kernel.cuh TBL_*
            lg, fmt = [0] * 4, [0] * 4
            # op -> (first table slot, its matrices: each a list of the modules whose rows stack into it)
            ops = {"qkv": (0, [[a.q_proj, a.k_proj, a.v_proj]]), "o": (6, [[a.o_proj]]),
                   "gateup": (7, [[mlp.gate_proj], [mlp.up_proj]]), "down": (9, [[mlp.down_proj]])}
            for i, (op, (slot, mats)) in enumerate(ops.items()):
                if k.get(op) in Q4_CHUNK_KINDS:
                    row[slot], lg[i], fmt[i] = self._q4(op, mats)
                else:
                    ws = [self._dense(mod.weight) for part in mats for mod in part]
                    row[slot:slot + len(ws)] = ws
            row[3:6] = [bias(a.q_proj), bias(a.k_proj), bias(a.v_proj)]
            row[10:12] = [self._dense(layer.input_layernorm.weight), self._dense(layer.post_attention_layernorm.weight)]
            row[12] = lg[0] | lg[1] << 8 | lg[2] << 16 | lg[3] << 24
            row[13] = fmt[0] | fmt[1] << 8 | fmt[2] << 16 | fmt[3] << 24
            ptrs += row
        self.inv_freq = m.inv_freq.to(device=dev, dtype=torch.float32).contiguous()
        if k.get("lm_head") in (*INT4_KINDS, INT3):
            lm, lg, bits = self._q4("lm_head", [[m.lm_head]])
            lm_lg = lg | bits << 8
        else:
            lm, lm_lg = self._dense(m.lm_head.weight), 0
        ptrs += [self._dense(m.embed_tokens.weight), lm, self._dense(m.norm.weight), _ptr(self.inv_freq), lm_lg]
        self.table = torch.tensor(ptrs, dtype=torch.int64, device=dev)  # kernel reads them as u64
        lay, cnt = scratch_layout(self.plan), counter_layout(self.plan)
        self.scratch = torch.zeros(lay["TOTAL"], dtype=torch.uint8, device=dev)
        self.counters = torch.zeros(cnt["TOTAL"], dtype=torch.int32, device=dev)
        self.ctl = torch.zeros(4, dtype=torch.int32, device=dev)
        self.io = torch.zeros(4 * B + 1, dtype=torch.int32, device=dev)  # tokens_in, rope_pos, attn_start, tokens_out, slot
        self.tokens_in, self.rope_pos = self.io[0:B], self.io[B:2 * B]
        self.attn_start, self.tokens_out, self.slot = self.io[2 * B:3 * B], self.io[3 * B:4 * B], self.io[4 * B:]
        self.logits = torch.empty(B, s.vocab, dtype=torch.float32, device=dev)
        self.rope_scale = float(getattr(m, "attention_scaling", 1.0))
        self.trace = None

    def _params(self, cache, logits: bool, advance: bool) -> bytes:
        k, v = cache.k, cache.v
        s = self.model.shape
        want = (s.layers, self.batch, s.kv_heads, k.shape[3], s.head_dim)
        if tuple(k.shape) != want or tuple(v.shape) != want or k.dtype != self.dtype or not k.is_contiguous():
            raise MegaKernelError(f"KV cache must be contiguous {self.dtype} of shape {want}, got {tuple(k.shape)}")
        return struct.pack("<15QdQ", _ptr(self.table), _ptr(k), _ptr(v), k.shape[3], _ptr(self.tokens_in),
                           _ptr(self.rope_pos), _ptr(self.attn_start), _ptr(self.slot), _ptr(self.tokens_out),
                           _ptr(self.logits) if logits else 0, _ptr(self.scratch), _ptr(self.counters),
                           _ptr(self.ctl), self.kernel_timeout_ns, 1 if advance else 0, self.rope_scale,
                           _ptr(self.trace))

    # ---- running ----------------------------------------------------------------------------------------------------
    def set_inputs(self, tokens, rope_pos, attn_start, slot: int):
        B = self.batch
        self.tokens_in.copy_(torch.as_tensor(tokens, dtype=torch.int32).view(B), non_blocking=True)
        self.rope_pos.copy_(torch.as_tensor(rope_pos, dtype=torch.int32).view(B), non_blocking=True)
        if attn_start is None:
            self.attn_start.zero_()
        else:
            self.attn_start.copy_(torch.as_tensor(attn_start, dtype=torch.int32).view(B), non_blocking=True)
        self.slot.fill_(int(slot))

    def launch(self, cache, logits: bool = True, advance: bool = False):
        """One decode step on the current stream with the inputs already in the device buffers."""
        if int(cache.k.shape[3]) <= 0:
            raise MegaKernelError("empty cache")
        if self._launches >= (1 << 20):  # keep the cumulative counters far from 32-bit overflow
            torch.cuda.current_stream(self.device).synchronize()
            self._reset_epoch()
        p = self._params(cache, logits, advance)
        buf = ctypes.create_string_buffer(p, len(p))
        stream = torch.cuda.current_stream(self.device).cuda_stream
        r = self.lib.egt_mk_launch(buf, ctypes.c_void_p(stream))
        if r == -1:
            raise MegaKernelError("launch refused: grid not co-resident")
        if r:
            raise MegaKernelError(f"launch failed: {self.lib.egt_mk_error_string(r).decode()}")
        self._launches += 1

    def _reset_epoch(self):
        """Epoch 0 again: the counters, and the scratch, whose flagged words (QKV's output) carry flags counted from
        the epoch, so that none left from before the reset can pass for a new write."""
        self.ctl.zero_()
        self.counters.zero_()
        self.scratch.zero_()
        self._launches = 0

    def check(self):
        """Wait (host timeout) and raise if this launch timed out on the device or on the host."""
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        t0 = time.monotonic()
        while not ev.query():
            if time.monotonic() - t0 > self.timeout_s:
                raise MegaKernelTimeout(
                    f"MegaKernel step did not finish within {self.timeout_s:.1f} s (device still busy): likely a "
                    "deadlock from a grid that is not co-resident (another kernel holding SMs?)")
            time.sleep(0.0002)
        err = int(self.ctl[1].item())
        if err:
            self._reset_epoch()
            raise MegaKernelTimeout(
                f"MegaKernel dependency wait timed out on the device (error {err}): a block never arrived, so the "
                "grid was not fully resident or another kernel held SMs; outputs of this step are invalid")

    @torch.inference_mode()
    def step(self, tokens, rope_pos, attn_start, slot: int, cache, check: bool = True):
        """One decode step; returns (next_tokens [B] int64, logits [B, V] float32 — a view reused next step)."""
        with self._lock:
            if not 0 <= slot < cache.k.shape[3]:
                raise MegaKernelError(f"slot {slot} outside the cache (max_len {cache.k.shape[3]})")
            self.set_inputs(tokens, rope_pos, attn_start, slot)
            self.launch(cache)
            if check:
                self.check()
            return self.tokens_out.long(), self.logits

    @torch.inference_mode()
    def generate(self, tokens, rope_pos, attn_start, slot: int, cache, steps: int) -> torch.Tensor:
        """`steps` greedy decode steps from these inputs (the first at cache row `slot`) with one host sync;
        returns the tokens [steps, B] int64. The cache must have rows up to slot + steps - 1."""
        with self._lock:
            if steps < 1:
                raise MegaKernelError(f"steps must be >= 1, got {steps}")
            if slot < 0 or slot + steps > cache.k.shape[3]:
                raise MegaKernelError(f"rows {slot}..{slot + steps - 1} outside the cache (max_len {cache.k.shape[3]})")
            out = torch.empty(steps, self.batch, dtype=torch.int32, device=self.device)
            self.set_inputs(tokens, rope_pos, attn_start, slot)
            for i in range(steps):
                self.launch(cache, logits=i == steps - 1, advance=True)
                out[i].copy_(self.tokens_out, non_blocking=True)
            self.check()
            return out.long()


# ---- torch custom op --------------------------------------------------------------------------------------------
_DECODERS: dict[int, MegaKernelDecoder] = {}


def register(decoder: MegaKernelDecoder) -> int:
    """Make a decoder callable through torch.ops.egt.megakernel_decode; returns its handle."""
    h = id(decoder)
    _DECODERS[h] = decoder
    return h


@torch.library.custom_op("egt::megakernel_decode", mutates_args=("k_cache", "v_cache"))
def megakernel_decode(handle: int, tokens: torch.Tensor, rope_pos: torch.Tensor, attn_start: torch.Tensor,
                      slot: int, k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One MegaKernel decode step: appends K/V at `slot`, returns (next tokens [B] int64, logits [B, V] fp32)."""
    dec = _DECODERS[handle]

    class _Cache:
        k, v = k_cache, v_cache

    nxt, logits = dec.step(tokens, rope_pos, attn_start, slot, _Cache)
    return nxt.clone(), logits.clone()


@megakernel_decode.register_fake
def _(handle, tokens, rope_pos, attn_start, slot, k_cache, v_cache):
    b = tokens.shape[0]
    vocab = _DECODERS[handle].model.shape.vocab if handle in _DECODERS else 1
    return tokens.new_empty(b, dtype=torch.int64), tokens.new_empty(b, vocab, dtype=torch.float32)
