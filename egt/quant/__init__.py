"""Adaptive group quantization (INT4/INT3/INT8 weight-only). See issue 3; packed module kinds register here."""
