"""CUDA C++ W4A16 GEMV kernels (dense INT4 and 2:4 / 1:4 sparse INT4), built with nvcc at first use.

Contract:
- `available()`: a CUDA device is present and the library is built and loaded (built on first call; a failed build
  warns once and makes it return False). CPU machines never build or load anything: importing this module does no
  CUDA work, and available() returns False before looking for nvcc.
- `w4_gemv(x, qweight, indices, scales, offsets, n, group, config=None, pdl=False)` -> y [M, out] in x's dtype:
  x [M, in] fp16/bf16 contiguous on CUDA, 1 <= M <= 16 (two mma n-tiles of 8 above 8 rows); qweight int32
  [out, ceil(kept/8)] in egt.quant.packing's 4-bit layout over the kept values (kept = in * n / 4); indices uint8
  [out, kept/4] (2-bit positions, four per byte, first in the low bits; None for dense); scales/offsets fp16
  [out, G] per group of `group` kept values (-1 = one group per row; offsets None = symmetric, code 8 is zero).
  Accumulates in fp32 on the tensor cores; the dequantized weight is rounded to x's dtype before the product.
- `supports(in_features, n, rows)` says whether the kernel takes a shape (16-byte aligned rows: the kept values of
  a row must fill whole 4-word units, i.e. in % 32 == 0 dense, % 64 for 2:4, % 128 for 1:4); callers fall back to
  their reference path otherwise.
- `config`: (row_tiles, splits, warps) to override the heuristic (`heuristic_config`); row_tiles must be 1 (the
  only compiled value), warps 4, 8 or 16 per block; bench/ sweeps these. splits is raised where the block's
  activation slice (`smem_bytes`) would pass SMEM_CAP.
- `pdl=True` launches with programmatic dependent launch (sm_90+; ignored on older GPUs): the kernel may start
  while the previous kernel in the stream finishes, issuing its first weight loads early, and waits
  (griddepcontrol.wait) before it reads x or writes y. Correct inside CUDA graphs (tests/test_w4_gemv.py).
  Contract: the weight tensors must not have been written by the kernels since the last non-PDL kernel in the
  stream (static model weights are fine; freshly computed ones need a normal launch or a sync in between). The
  model-facing wrappers use it only with EGT_GEMV_PDL=1 (`default_pdl`).
Build: `egt/kernels/w4_gemv.cu` -> a shared library cached under $EGT_CACHE (default ~/.cache/egt)/kernels, named by
the sha256 of the source and the target list (sm_80 and sm_90 machine code; EGT_GEMV_ARCHS="80;90" to change),
loaded with ctypes. Scratch (fp32 split-K partials and arrival counters) is kept per (device, stream), so two
streams never share it; counters return to zero at the end of every call.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SRC = Path(__file__).with_name("w4_gemv.cu")
MAX_M = 16  # decode batch rows: the mma's 8 B columns, one or two n-tiles
WARPS = (4, 8, 16)  # warps per block the library is built for
CHUNKS_PER_WARP = 2  # chunks (128 stored values of a row) per register stage of a warp (U in the .cu)
SMEM_CAP = 96 * 1024  # bytes of activations one block stages (a given config gets more splits if needed)
MODE = {4: 0, 1: 1, 2: 2}  # n kept of 4 -> kernel mode
_lock = threading.Lock()
_lib = None
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_sms: dict[int, int] = {}


class BuildError(RuntimeError):
    """nvcc failed or is missing; the message carries the compiler's output."""


class _Params(ctypes.Structure):
    _fields_ = [("x", ctypes.c_void_p), ("qw", ctypes.c_void_p), ("idx", ctypes.c_void_p), ("sc", ctypes.c_void_p),
                ("of", ctypes.c_void_p), ("y", ctypes.c_void_p), ("ws", ctypes.c_void_p),
                ("counters", ctypes.c_void_p)] + [(n, ctypes.c_int) for n in
                                                  ("M", "N", "K", "KC", "KW", "G", "gshift", "S", "cps")]


def cache_dir() -> Path:
    root = os.environ.get("EGT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "egt")
    return Path(root) / "kernels"


def archs() -> list[str]:
    env = os.environ.get("EGT_GEMV_ARCHS")
    return env.split(";") if env else ["80", "90"]


def nvcc_path() -> str | None:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


def library_path() -> Path:
    h = hashlib.sha256((SRC.read_text() + "|" + ";".join(archs())).encode()).hexdigest()[:16]
    return cache_dir() / f"w4_gemv_{h}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernels (or reuse the cached library for this exact source); returns the .so path."""
    out = library_path()
    if out.exists():
        return out
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc not found (set NVCC or put it on PATH)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as td:
        tmp = Path(td) / "lib.so"
        cmd = [nvcc, str(SRC), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-Xptxas", "-v", "--threads", "0",
               "-lineinfo", "-o", str(tmp)]
        for a in archs():
            cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"nvcc failed:\n{r.stderr[-6000:]}")
        out.with_suffix(".log").write_text(r.stderr)
        if verbose:
            print(r.stderr)
        os.replace(tmp, out)
    return out


def _load():
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                lib = ctypes.CDLL(str(build()))
                lib.egt_w4_gemv.argtypes = [ctypes.POINTER(_Params), ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
                lib.egt_w4_smem_bytes.argtypes = [ctypes.POINTER(_Params), ctypes.c_int, ctypes.c_int]
                lib.egt_w4_smem_bytes.restype = ctypes.c_int
                lib.egt_w4_gemv.restype = ctypes.c_int
                lib.egt_w4_error_string.restype = ctypes.c_char_p
                lib.egt_w4_num_sms.restype = ctypes.c_int
                _lib = lib
    return _lib


_unavailable: str | None = None  # why the library could not be built or loaded (then callers use their fallback)


def available() -> bool:
    """CUDA is present and the kernel library is loaded (building it on first call: about a minute with nvcc).
    A failed build is reported once as a warning and remembered, so callers fall back instead of failing."""
    global _unavailable
    if not torch.cuda.is_available() or _unavailable is not None:
        return False
    if _lib is None:
        if not library_path().exists() and nvcc_path() is None:
            _unavailable = "nvcc not found and no prebuilt library"
            return False
        try:
            _load()
        except (BuildError, OSError) as e:
            _unavailable = str(e)
            warnings.warn(f"egt.kernels: W4A16 kernels unavailable, using the reference path: {e}", stacklevel=2)
            return False
    return True


def supports(in_features: int, n: int, rows: int) -> bool:
    kept = in_features * n // 4
    return n in MODE and 1 <= rows <= MAX_M and in_features % 8 == 0 and kept % 32 == 0


def _num_sms(device: int) -> int:
    if device not in _sms:
        _sms[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _sms[device]


def _gshift(kept: int, group: int) -> tuple[int, int]:
    """(number of groups per row, log2 of the group size or -1 for one group per row), as the kernel sees them."""
    gs = kept if group == -1 else group
    ng = -(-kept // gs)
    return ng, (-1 if ng == 1 else gs.bit_length() - 1)


def smem_bytes(m: int, n: int, kept: int, group: int, cps: int, warps: int) -> int:
    """Dynamic shared memory of one block: its activation slice plus sum(x) per chunk, or the cross-warp reduction
    if larger (mirror of smem_bytes() in the .cu; a CUDA test checks they agree)."""
    upc = 16 * (1 if n == 4 else 4 // n)
    xbytes = m * cps * upc * 16 + -(-(m * cps * 4) // 16) * 16
    return max(xbytes, warps * (2 if m > 8 else 1) * 4 * 32 * 4)


def _fit_splits(m: int, n: int, kept: int, group: int, splits: int, warps: int) -> tuple[int, int]:
    """(splits, chunks per split) with splits raised until a block's activation slice fits SMEM_CAP."""
    nchunks = -(-kept // 128)
    splits = min(max(splits, 1), nchunks)
    while True:
        cps = -(-nchunks // splits)
        if m * cps * 16 * (1 if n == 4 else 4 // n) * 16 <= SMEM_CAP or cps == 1:  # the activation slice
            return -(-nchunks // cps), cps
        splits += 1


def heuristic_config(out_f: int, kept: int, m: int, n: int, sms: int, group: int = 128) -> tuple[int, int, int]:
    """(row_tiles, splits, warps). At decode sizes the time is a per-block latency chain (launch, activation
    staging, DRAM round trips, a few hundred dependent instructions per warp, the reduction), so: the whole grid
    should be resident at once (one wave), many row tiles (>= 2 per SM) -> blocks of 4 warps, several per SM; few
    row tiles -> 8 or 16 warps per block to share out the chunks; K split across blocks only where the activation
    slice would not fit in shared memory (the fp32 partials and the last-block reduction cost about a
    microsecond). Checked against the config sweep in bench/results/quant_kernels.md (M=1, H100).
    From 8 rows a chunk costs a warp a whole n-tile (8 rows) of mma and activation loads, or two above 8, and more
    warps in flight pay: 16 a block where the row has few chunks, a 4-way K split where row tiles are few and
    chunks many, and blocks of 8 warps above 8 rows. From the sweep of every config at 8 and 16 rows on an H200
    (bench/results/megakernel/session19/run4_gemv_sweep.log): where these picks differ from the rule below 8 rows
    they were 1.04-1.37x faster on the 1.5B shapes in the same run; still slower than fp16 cuBLAS on 1536 x 8960 and
    8960 x 1536 from 8 rows (bench/results/megakernel/session19/README.md)."""
    nchunks = -(-kept // 128)
    row_blocks = -(-out_f // 16)
    splits = 1
    if row_blocks >= 2 * sms:
        warps = 8 if m > 8 else 4
    elif m < 8:
        warps = 8 if nchunks <= 16 else 16
    elif nchunks <= 16:
        warps = 16
    else:
        splits, warps = 4, (8 if m > 8 else 4)
    splits, _ = _fit_splits(m, n, kept, group, splits, warps)
    return 1, splits, warps


_cc: dict[int, bool] = {}


def default_pdl() -> bool:
    """Whether the model-facing wrappers (QuantLinear, the sparse modules) launch with PDL: only with
    EGT_GEMV_PDL=1. Their weights are static buffers (the contract above holds), but in the torch-graph decode step
    most GEMVs follow a torch kernel that never triggers its dependents, and PDL measured no gain there (H100,
    llama-3.2-1b w4a16 1.838 vs 1.858 ms, qwen2.5-1.5b 3.514 vs 3.412 ms; bench/results/quant_kernels.notes.md)."""
    return os.environ.get("EGT_GEMV_PDL", "0") == "1"


def _pdl_ok(device: int) -> bool:
    """Programmatic dependent launch needs sm_90+ (the .cu compiles griddepcontrol only there)."""
    if device not in _cc:
        _cc[device] = torch.cuda.get_device_capability(device) >= (9, 0)
    return _cc[device]


def library_smem_bytes(m: int, n: int, kept: int, group: int, cps: int, warps: int) -> int:
    """smem_bytes() of the built library (for the test that the Python mirror agrees)."""
    ng, gshift = _gshift(kept, group)
    p = _Params(0, 0, 0, 0, 0, 0, 0, 0, m, 16, kept * 4 // n, kept, -(-kept // 8), ng, gshift, 1, cps)
    return _load().egt_w4_smem_bytes(ctypes.byref(p), MODE[n], warps)


def _scratch_for(device: int, stream: int, floats: int, counters: int):
    key = (device, stream)
    ws, cnt = _scratch.get(key, (None, None))
    if ws is None or ws.numel() < floats or cnt.numel() < counters:
        ws = torch.empty(max(floats, 1 << 16), device=f"cuda:{device}", dtype=torch.float32)
        cnt = torch.zeros(max(counters, 4096), device=f"cuda:{device}", dtype=torch.int32)
        _scratch[key] = (ws, cnt)
    return ws, cnt


def w4_gemv(x: torch.Tensor, qweight: torch.Tensor, indices: torch.Tensor | None, scales: torch.Tensor,
            offsets: torch.Tensor | None, n: int, group: int, config: tuple[int, int, int] | None = None,
            pdl: bool = False) -> torch.Tensor:
    """y [M, out] = x [M, in] @ W^T; see the module docstring."""
    if n not in MODE:
        raise ValueError(f"n must be 4 (dense), 2 or 1, got {n}")
    if (n == 4) != (indices is None):
        raise ValueError("indices are required for n=1/2 and must be None for dense (n=4)")
    if x.dim() != 2 or not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"x must be a 2-D fp16/bf16 CUDA tensor, got {tuple(x.shape)} {x.dtype} on {x.device}")
    m, in_f = x.shape
    if not 1 <= m <= MAX_M:
        raise ValueError(f"x must have 1 <= M <= {MAX_M} rows, got {m}")
    kept = in_f * n // 4
    out_f = qweight.shape[0]
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[1] != -(-kept // 8):
        raise ValueError(f"packed weight {tuple(qweight.shape)} {qweight.dtype} does not hold {kept} kept 4-bit values per row")
    if indices is not None and (indices.dtype != torch.uint8 or tuple(indices.shape) != (out_f, kept // 4)):
        raise ValueError(f"indices must be uint8 [{out_f}, {kept // 4}], got {tuple(indices.shape)} {indices.dtype}")
    gs = kept if group == -1 else group
    ng = -(-kept // gs)
    if tuple(scales.shape) != (out_f, ng) or scales.dtype != torch.float16:
        raise ValueError(f"scales must be float16 [{out_f}, {ng}], got {tuple(scales.shape)} {scales.dtype}")
    if offsets is not None and (offsets.shape != scales.shape or offsets.dtype != torch.float16):
        raise ValueError("offsets must match scales (float16)")
    if group != -1 and (group < 32 or group & (group - 1)):
        raise ValueError(f"group must be a power of two >= 32 kept values, or -1, got {group}")
    if not supports(in_f, n, m):
        raise ValueError(f"in_features={in_f} with n={n} is not 16-byte aligned for the kernel (see supports())")
    lib = _load()
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    x = x.contiguous()
    for t in (qweight, indices, scales, offsets):
        if t is not None and (not t.is_contiguous() or t.device != x.device):
            raise ValueError("weights must be contiguous and on x's device")
    rt, splits, warps = config or heuristic_config(out_f, kept, m, n, _num_sms(dev), group)
    if rt != 1 or warps not in WARPS or splits < 1:
        raise ValueError(f"config must be (1, splits >= 1, warps in {WARPS}), got {config}")
    splits, cps = _fit_splits(m, n, kept, group, splits, warps)
    y = torch.empty(m, out_f, device=x.device, dtype=x.dtype)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    row_blocks = -(-out_f // (16 * rt))
    ws, cnt = _scratch_for(dev, stream, splits * m * out_f if splits > 1 else 0, row_blocks)
    p = _Params(x.data_ptr(), qweight.data_ptr(), 0 if indices is None else indices.data_ptr(), scales.data_ptr(),
                0 if offsets is None else offsets.data_ptr(), y.data_ptr(), ws.data_ptr(), cnt.data_ptr(),
                m, out_f, in_f, kept, qweight.shape[1], ng, -1 if ng == 1 else gs.bit_length() - 1, splits, cps)
    err = lib.egt_w4_gemv(ctypes.byref(p), 0 if x.dtype == torch.float16 else 1, MODE[n], int(offsets is None), rt,
                          warps, int(bool(pdl) and _pdl_ok(dev)), ctypes.c_void_p(stream))
    if err != 0:
        raise RuntimeError(f"egt_w4_gemv failed: {lib.egt_w4_error_string(err).decode()} (config {rt}, {splits}, {warps})")
    return y
