"""egt: Efficient Generative Targeting.

Compress an advertising LLM (adaptive INT4, mixed N:M sparsity), constrain its outputs to a catalog with
prefix-tree parallel verification, and decode with a statically scheduled MegaKernel on GPU.
"""
__version__ = "0.1.0"
