"""GPU resource profiles: the hardware side of the shared-memory constraint model and the cost model.

Contract:
- A `GpuProfile` names the resources a plan may use: SMs (= persistent blocks), shared memory per block, memory
  bandwidth, and the latencies the cost model charges. Plans are keyed by the profile name.
- `PROFILES["h100"]`, `PROFILES["h200"]` and `PROFILES["ada-l20"]` are fixed tables; `from_device()` reads SMs and
  the shared-memory opt-in limit off the current GPU and keeps the bandwidth/latency constants of the closest table
  entry (a card of a table entry, same name and SM count, keeps its name, so its stored plans are found).
- A profile smaller than the device (ada-l20 on an H100) is honoured by launching only `sms` blocks and sizing
  shared memory under `smem_per_block`; nothing else about the device is assumed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class GpuProfile:
    name: str
    sms: int
    smem_per_block: int  # bytes of dynamic + static shared memory one block may use
    bandwidth_gbs: float  # DRAM bandwidth used by the cost model (GB/s)
    l2_bytes: int
    # Calibrated on an H100 from traced builds (bench/megakernel_trace.py, 2026-11-27): a grid-wide dependency
    # costs ~1.3-2 us; a block with ~40 KB in flight sustains ~20 GB/s, i.e. ~2 us loaded DRAM latency.
    sync_us: float = 1.6  # one grid-wide dependency: release, L2 round trip, acquire
    mem_latency_us: float = 2.0  # DRAM round trip under load (Little's law for bytes in flight)
    l2_bw_per_sm_gbs: float = 60.0  # activation staging rate from L2 into one SM
    # The most one SM streams from DRAM: fitted to the H200 A/B runs (26 GB/s orders their pairs best, and the H200's
    # llama-3.2-1b and qwen2.5-1.5b bf16 steps are 1.17-1.18x the H100's for about 1.4x the bandwidth). It does not
    # bind on the H100 (share 22.7 GB/s).
    sm_stream_gbs: float = 26.0
    cc: tuple[int, int] = (9, 0)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, GpuProfile] = {
    # H100 SXM: 132 SMs, 227 KB opt-in shared memory per block, ~3.0 TB/s measured device-to-device copy.
    "h100": GpuProfile("h100", sms=132, smem_per_block=227 * 1024, bandwidth_gbs=3000.0, l2_bytes=50 * 2**20, cc=(9, 0)),
    # H200 SXM: the H100's die (132 SMs, 227 KB, the same latencies) with HBM3e: ~4.1 TB/s measured device-to-device
    # copy (bench/results/decode.md, H200 runs).
    "h200": GpuProfile("h200", sms=132, smem_per_block=227 * 1024, bandwidth_gbs=4100.0, l2_bytes=50 * 2**20, cc=(9, 0)),
    # NVIDIA L20 (Ada, sm_89): 92 SMs, ~99 KB per block, 864 GB/s GDDR6, no TMA.
    "ada-l20": GpuProfile("ada-l20", sms=92, smem_per_block=99 * 1024, bandwidth_gbs=864.0, l2_bytes=96 * 2**20,
                          sync_us=1.8, mem_latency_us=2.2, cc=(8, 9)),
}


def from_device(device=None) -> GpuProfile:
    """The profile of the current CUDA device (SMs and shared memory read from it)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    cc = (props.major, props.minor)
    base = PROFILES["h100"] if cc >= (9, 0) else PROFILES["ada-l20"]
    name = props.name.lower().replace("nvidia ", "").replace(" ", "-")
    # A card of a table profile keeps the table's name and constants, so plans searched for "h100" are found on any
    # H100 (and "h200" ones on any H200).
    for known, marker in (("h100", "h100"), ("h200", "h200"), ("ada-l20", "l20")):
        if marker in name and props.multi_processor_count == PROFILES[known].sms:
            name, base = known, PROFILES[known]
    smem = getattr(props, "shared_memory_per_block_optin", None) or base.smem_per_block
    return replace(base, name=name, sms=props.multi_processor_count, smem_per_block=int(smem), cc=cc,
                   l2_bytes=int(getattr(props, "L2_cache_size", base.l2_bytes)))


def get_profile(name: str | GpuProfile | None) -> GpuProfile:
    """`None` or "device": read the GPU; otherwise a name from PROFILES."""
    if isinstance(name, GpuProfile):
        return name
    if name in (None, "device"):
        return from_device()
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(PROFILES)} or 'device'") from None
