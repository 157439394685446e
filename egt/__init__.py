"""egt: Efficient Generative Targeting.

Compress an advertising LLM (adaptive INT4, mixed N:M sparsity), constrain its outputs to a catalog with
prefix-tree parallel verification, and decode with a statically scheduled MegaKernel on GPU.

The main classes are importable from here; they load lazily so that `import egt` stays cheap.
"""
__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "egt.engine",
    "CompressConfig": "egt.compress",
    "compress": "egt.compress",
    "CompressionPlan": "egt.plan",
    "LinearPlan": "egt.plan",
    "Catalog": "egt.verify",
    "Targeter": "egt.verify",
    "Client": "egt.client",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'egt' has no attribute {name!r}")
