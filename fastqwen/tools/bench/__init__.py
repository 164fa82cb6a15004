"""The benchmark: the record schema and measuring helpers, the runner, the notebook views.

Kept free of imports: `bench/anchor_bench.py` imports `measure` in the anchor's own
environment, where qwen-tts 0.1.1 must not load.
"""
