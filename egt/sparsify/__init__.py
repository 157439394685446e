"""Layer-adaptive N:M sparsification (2:4 / 1:4) with 2-bit in-group indices. See issue 4."""
