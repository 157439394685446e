"""The compression plan: one object that every stage reads.

Contract:
- A `CompressionPlan` says, for every linear module of a model (HF-style names such as `layers.3.mlp.down_proj`
  and `lm_head`), how its weight is stored: bits (16 = kept in float), group size, symmetric or not, and an
  N:M sparsity pattern. The quantizer, the sparsifier, the on-disk format, the kernels and the MegaKernel codegen
  read it; none of them re-derives it.
- `storage_bits(out, in)` is the one place that counts a module's bytes (values, scales, zero points, indices),
  so bit budgets and reports agree with what the format writes.
- Plans round-trip through plain JSON dicts (`to_dict` / `from_dict`) and are stored in the manifest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

FLOAT_BITS = 16
VALID_BITS = (3, 4, 8, FLOAT_BITS)
VALID_GROUPS = (32, 64, 128, 256, -1)  # -1 = one group per output channel
VALID_SPARSITY = ("dense", "2:4", "1:4")
SCALE_BITS = 16  # fp16 scales
ZERO_BITS = 16  # fp16 zero points (asymmetric only)
INDEX_BITS = 2  # in-group position of each kept value of an N:4 group


class PlanError(ValueError):
    """An invalid plan; the message says which field and why."""


@dataclass(frozen=True)
class LinearPlan:
    bits: int = FLOAT_BITS
    group_size: int = 128
    symmetric: bool = False
    sparsity: str = "dense"

    def __post_init__(self):
        if self.bits not in VALID_BITS:
            raise PlanError(f"bits must be one of {VALID_BITS}, got {self.bits}")
        if self.group_size not in VALID_GROUPS:
            raise PlanError(f"group_size must be one of {VALID_GROUPS}, got {self.group_size}")
        if self.sparsity not in VALID_SPARSITY:
            raise PlanError(f"sparsity must be one of {VALID_SPARSITY}, got {self.sparsity!r}")

    @property
    def quantized(self) -> bool:
        return self.bits < FLOAT_BITS

    @property
    def density(self) -> float:
        """Fraction of weights kept: N/M."""
        if self.sparsity == "dense":
            return 1.0
        n, m = map(int, self.sparsity.split(":"))
        return n / m

    def storage_bits(self, out_features: int, in_features: int) -> int:
        """Exact bits this module occupies on disk and in GPU memory (bias excluded)."""
        kept = round(out_features * in_features * self.density)
        bits = kept * self.bits
        if self.sparsity != "dense":
            bits += kept * INDEX_BITS
        if self.quantized:
            # Groups run along the input dimension over the kept (compacted) values of each row.
            kept_per_row = round(in_features * self.density)
            group = kept_per_row if self.group_size == -1 else self.group_size
            groups = out_features * -(-kept_per_row // group)
            bits += groups * (SCALE_BITS + (0 if self.symmetric else ZERO_BITS))
        return bits

    def describe(self) -> str:
        if not self.quantized:
            q = "fp16"
        else:
            g = "ch" if self.group_size == -1 else str(self.group_size)
            q = f"int{self.bits} g{g} {'sym' if self.symmetric else 'asym'}"
        return q if self.sparsity == "dense" else f"{self.sparsity} {q}"


@dataclass
class CompressionPlan:
    method: str = "none"
    layers: dict[str, LinearPlan] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # how the plan was made: budget, metric, calibration set, ...

    def for_module(self, name: str) -> LinearPlan:
        """The plan of one linear module; modules not listed stay in float."""
        return self.layers.get(name, LinearPlan())

    def with_module(self, name: str, **changes) -> "CompressionPlan":
        layers = dict(self.layers)
        layers[name] = replace(self.for_module(name), **changes)
        return CompressionPlan(self.method, layers, dict(self.meta))

    def bits_per_weight(self, linear_shapes: dict[str, tuple[int, int]]) -> float:
        """Average stored bits per original weight over the given modules ({name: (out, in)})."""
        total = sum(o * i for o, i in linear_shapes.values())
        stored = sum(self.for_module(n).storage_bits(o, i) for n, (o, i) in linear_shapes.items())
        return stored / total

    def to_dict(self) -> dict:
        return {"method": self.method, "meta": self.meta, "layers": {k: asdict(v) for k, v in sorted(self.layers.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionPlan":
        try:
            layers = {k: LinearPlan(**v) for k, v in d.get("layers", {}).items()}
            return cls(method=str(d.get("method", "none")), layers=layers, meta=dict(d.get("meta", {})))
        except TypeError as e:
            raise PlanError(f"malformed plan: {e}")


def linear_modules(model) -> dict[str, tuple[int, int]]:
    """{module name: (out_features, in_features)} of every compressible projection, the LM head included."""
    shape = model.shape
    out = {}
    for i in range(shape.layers):
        for kind, (o, n) in shape.linear_shapes().items():
            sub = "self_attn" if kind in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out[f"layers.{i}.{sub}.{kind}"] = (o, n)
    out["lm_head"] = (shape.vocab, shape.hidden)
    return out
