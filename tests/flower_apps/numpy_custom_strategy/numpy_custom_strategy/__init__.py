"""numpy-custom-strategy: a Flower App whose strategy is written in the app (NumPy only)."""
