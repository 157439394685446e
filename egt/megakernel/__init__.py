"""MegaKernel decode path (issue 6): task DAG -> shared-memory model -> offline search -> CUDA codegen -> runtime.

Public API:
- `build_dag(shape, compression_plan)`: the fine-grained task DAG of one decode step (`dag.py`).
- `search(shape, batch, profile)` / `plan_for(...)` / `PlanStore`: schedules and stored winner plans (`search.py`).
- `MegaKernelDecoder(model, batch)`: one persistent-kernel launch per decode step (`runtime.py`), also exposed as
  the torch custom op `torch.ops.egt.megakernel_decode`.
- `attach(engine)`: what `Engine(backend="megakernel")` calls (`hybrid.py`).
"""
from .profiles import PROFILES, GpuProfile, get_profile
from .schedule import AttnSchedule, MatvecSchedule, MegaPlan
from .search import PlanStore, plan_for, predict_ms, search, spearman


def __getattr__(name):  # torch-heavy pieces load lazily so `import egt.megakernel` stays cheap
    if name in ("MegaKernelDecoder", "MegaKernelError", "MegaKernelTimeout", "register", "megakernel_decode"):
        from . import runtime
        return getattr(runtime, name)
    if name == "attach":
        from .hybrid import attach
        return attach
    if name in ("build_dag", "Task", "TaskDAG"):
        from . import dag
        return getattr(dag, name)
    raise AttributeError(name)
