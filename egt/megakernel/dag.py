"""The task DAG of one decode step, built from a model shape and a compression plan.

Contract:
- `build_dag(shape, compression=None, batch=1, attn_splits=1)` returns a `TaskDAG` whose tasks are fine-grained
  (one per head for QKV, one per (batch row, kv head, split) for attention, one per (batch row, kv head) for the
  split reduction) with exact read-after-write edges, plus resource edges between tasks that reuse one buffer
  (the residual double buffer, the shared activation page).
- Every weight a task streams is a `WeightOperand` whose `kind` comes from the compression plan
  (`dense-bf16`, `dense-fp16`, later `int4-g128`, `2:4-int4-g64`, ...). The bytes it moves come from the plan's
  own `storage_bits`, so a new format is one more operand kind: the DAG, the cost model and the phase layout stay.
- `phases()` groups the tasks into the ordered phases the static schedule runs (a grid-wide counter between
  consecutive phases, except where a phase only needs part of the previous one; QKV -> attention is no counter:
  attention spins on the flagged words QKV writes, csrc/mk_common.cuh). `check_phases` proves the grouping respects
  every edge, which is what lets the generated kernel drop every run-time dependency check but these waits.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..models import ModelShape


@dataclass(frozen=True)
class WeightOperand:
    module: str  # HF-style module name, e.g. "layers.3.mlp.down_proj"
    rows: int
    cols: int
    kind: str  # operand kind: how the codegen reads it
    bytes: int


@dataclass
class Task:
    name: str
    op: str  # rmsnorm | qkv | rope_kv | attention | attn_reduce | o_proj | gate_up | silu_mul | down_proj | lm_head | argmax
    layer: int
    reads: tuple[str, ...]  # buffers read
    writes: tuple[str, ...]  # buffers written
    weights: tuple[WeightOperand, ...] = ()
    deps: set[str] = field(default_factory=set)
    flops: int = 0

    @property
    def weight_bytes(self) -> int:
        return sum(w.bytes for w in self.weights)


def operand_kind(compression, module: str, dtype: str) -> tuple[str, int | None]:
    """(kind, stored bits) of one module's weight under the compression plan (None plan: dense)."""
    if compression is None:
        return f"dense-{dtype}", None
    lp = compression.for_module(module)
    if not lp.quantized and lp.sparsity == "dense":
        return f"dense-{dtype}", None
    g = "ch" if lp.group_size == -1 else str(lp.group_size)
    kind = f"int{lp.bits}-g{g}-{'sym' if lp.symmetric else 'asym'}" if lp.quantized else f"dense-{dtype}"
    if lp.sparsity != "dense":
        kind = f"{lp.sparsity}-{kind}"
    return kind, None


def _weight(compression, module: str, rows: int, cols: int, dtype: str) -> WeightOperand:
    kind, _ = operand_kind(compression, module, dtype)
    if compression is not None:
        bits = compression.for_module(module).storage_bits(rows, cols)
        if not compression.for_module(module).quantized and compression.for_module(module).sparsity == "dense":
            bits = rows * cols * 16
    else:
        bits = rows * cols * 16
    return WeightOperand(module, rows, cols, kind, bits // 8)


class TaskDAG:
    def __init__(self, shape: ModelShape, batch: int):
        self.shape, self.batch = shape, batch
        self.tasks: dict[str, Task] = {}
        self._writers: dict[str, list[str]] = defaultdict(list)

    def add(self, t: Task, extra_deps: tuple[str, ...] = ()) -> Task:
        # read-after-write: depend on every task that wrote a buffer this task reads
        for buf in t.reads:
            t.deps.update(self._writers.get(buf, ()))
        t.deps.update(extra_deps)
        self.tasks[t.name] = t
        for buf in t.writes:
            self._writers[buf].append(t.name)
        return t

    def retire(self, buf: str):
        """A buffer is about to be rewritten: later writers start a fresh version (resource edge handled by add)."""
        self._writers.pop(buf, None)

    def topo_order(self) -> list[str]:
        indeg = {n: len(t.deps) for n, t in self.tasks.items()}
        users = defaultdict(list)
        for n, t in self.tasks.items():
            for d in t.deps:
                users[d].append(n)
        ready = [n for n, k in indeg.items() if k == 0]
        out = []
        while ready:
            n = ready.pop()
            out.append(n)
            for u in users[n]:
                indeg[u] -= 1
                if indeg[u] == 0:
                    ready.append(u)
        if len(out) != len(self.tasks):
            raise ValueError("task graph has a cycle")
        return out

    def total_weight_bytes(self) -> int:
        return sum(t.weight_bytes for t in self.tasks.values())

    def critical_path(self, cost) -> float:
        """Longest path where cost(task) is the task's own time."""
        finish: dict[str, float] = {}
        for n in self.topo_order():
            t = self.tasks[n]
            finish[n] = cost(t) + max((finish[d] for d in t.deps), default=0.0)
        return max(finish.values(), default=0.0)

    def phases(self) -> list[tuple[str, list[str]]]:
        """Tasks grouped into the static schedule's phases, in execution order."""
        order = ["rmsnorm_qkv", "attention", "o_proj", "rmsnorm_gate_up", "down_proj"]
        groups: dict[tuple[int, str], list[str]] = defaultdict(list)
        phase_of = {"rmsnorm": None, "qkv": "rmsnorm_qkv", "rope_kv": "attention", "attention": "attention",
                    "attn_reduce": "attention", "o_proj": "o_proj", "gate_up": "rmsnorm_gate_up",
                    "silu_mul": "rmsnorm_gate_up", "down_proj": "down_proj", "lm_head": "lm_head",
                    "argmax": "lm_head"}
        for n, t in self.tasks.items():
            ph = phase_of[t.op]
            if ph is None:  # RMSNorm is fused into its consumer's prologue: it runs in the consumer's phase
                ph = "rmsnorm_qkv" if n.endswith("norm1") else ("rmsnorm_gate_up" if n.endswith("norm2") else "lm_head")
            groups[(t.layer, ph)].append(n)
        out = []
        for layer in range(self.shape.layers):
            for ph in order:
                out.append((f"L{layer}.{ph}", sorted(groups[(layer, ph)])))
        out.append(("final.lm_head", sorted(groups[(self.shape.layers, "lm_head")])))
        return out


def build_dag(shape: ModelShape, compression=None, batch: int = 1, attn_splits: int = 1, dtype: str = "bf16") -> TaskDAG:
    s = shape
    hd, g = s.head_dim, s.heads // s.kv_heads
    dag = TaskDAG(s, batch)
    x = "embed"
    for L in range(s.layers):
        p = f"layers.{L}"
        dag.add(Task(f"{p}.norm1", "rmsnorm", L, (x,), (f"{p}.xn1",), flops=3 * batch * s.hidden))
        for h in range(s.heads):
            dag.add(Task(f"{p}.q{h}", "qkv", L, (f"{p}.xn1",), (f"{p}.q{h}",),
                         (_weight(compression, f"{p}.self_attn.q_proj", hd, s.hidden, dtype),),
                         flops=2 * batch * hd * s.hidden))
        for h in range(s.kv_heads):
            for kv in ("k", "v"):
                dag.add(Task(f"{p}.{kv}{h}", "qkv", L, (f"{p}.xn1",), (f"{p}.{kv}{h}",),
                             (_weight(compression, f"{p}.self_attn.{kv}_proj", hd, s.hidden, dtype),),
                             flops=2 * batch * hd * s.hidden))
        for h in range(s.kv_heads):
            dag.add(Task(f"{p}.rope_kv{h}", "rope_kv", L, (f"{p}.k{h}", f"{p}.v{h}"), (f"{p}.cache{h}",)))
        for b in range(batch):
            for h in range(s.kv_heads):
                qs = tuple(f"{p}.q{h * g + j}" for j in range(g))
                for sp in range(attn_splits):
                    dag.add(Task(f"{p}.attn.b{b}.h{h}.s{sp}", "attention", L, qs + (f"{p}.cache{h}",),
                                 (f"{p}.part.b{b}.h{h}.s{sp}",)))
                dag.add(Task(f"{p}.attn_reduce.b{b}.h{h}", "attn_reduce", L,
                             tuple(f"{p}.part.b{b}.h{h}.s{sp}" for sp in range(attn_splits)), (f"{p}.attn.b{b}.h{h}",)))
        attn_all = tuple(f"{p}.attn.b{b}.h{h}" for b in range(batch) for h in range(s.kv_heads))
        dag.add(Task(f"{p}.o_proj", "o_proj", L, attn_all + (x,), (f"{p}.xmid",),
                     (_weight(compression, f"{p}.self_attn.o_proj", s.hidden, s.heads * hd, dtype),),
                     flops=2 * batch * s.hidden * s.heads * hd))
        dag.add(Task(f"{p}.norm2", "rmsnorm", L, (f"{p}.xmid",), (f"{p}.xn2",), flops=3 * batch * s.hidden))
        dag.add(Task(f"{p}.gate_up", "gate_up", L, (f"{p}.xn2",), (f"{p}.gu",),
                     (_weight(compression, f"{p}.mlp.gate_proj", s.intermediate, s.hidden, dtype),
                      _weight(compression, f"{p}.mlp.up_proj", s.intermediate, s.hidden, dtype)),
                     flops=4 * batch * s.intermediate * s.hidden))
        dag.add(Task(f"{p}.silu_mul", "silu_mul", L, (f"{p}.gu",), (f"{p}.h",), flops=5 * batch * s.intermediate))
        # resource edge: the residual double buffer this layer writes was last read by the previous layer's o_proj
        dag.add(Task(f"{p}.down_proj", "down_proj", L, (f"{p}.h", f"{p}.xmid"), (f"{p}.xout",),
                     (_weight(compression, f"{p}.mlp.down_proj", s.hidden, s.intermediate, dtype),),
                     flops=2 * batch * s.hidden * s.intermediate),
                extra_deps=(f"{p}.o_proj",))
        x = f"{p}.xout"
    L = s.layers
    dag.add(Task("final.norm", "rmsnorm", L, (x,), ("xf",), flops=3 * batch * s.hidden))
    dag.add(Task("final.lm_head", "lm_head", L, ("xf",), ("logits",),
                 (_weight(compression, "lm_head", s.vocab, s.hidden, dtype),), flops=2 * batch * s.vocab * s.hidden))
    dag.add(Task("final.argmax", "argmax", L, ("logits",), ("token",)))
    return dag


def check_phases(dag: TaskDAG) -> list[str]:
    """Edges the phase order would violate (empty = the static schedule is safe). Within a phase only the
    attention tasks have internal edges (rope_kv -> attention -> attn_reduce), which the kernel orders itself."""
    where = {}
    for i, (_, names) in enumerate(dag.phases()):
        for n in names:
            where[n] = i
    bad = []
    internal = {("rope_kv", "attention"), ("attention", "attn_reduce"), ("rmsnorm", "qkv"), ("rmsnorm", "gate_up"),
                ("gate_up", "silu_mul"), ("rmsnorm", "lm_head"), ("lm_head", "argmax")}
    for n, t in dag.tasks.items():
        for d in t.deps:
            if where[d] > where[n]:
                bad.append(f"{d} -> {n} runs backwards")
            elif where[d] == where[n] and (dag.tasks[d].op, t.op) not in internal:
                bad.append(f"{d} -> {n} inside one phase")
    return bad
