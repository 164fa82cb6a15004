"""The proof beside the engine: the official dynamic-cache runner and the parity checks."""
