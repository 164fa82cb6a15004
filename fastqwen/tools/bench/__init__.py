"""The benchmark: `run` (the program), `measure` (timing and profiler helpers), `records`
(the record schema, loading runs), `tables`, `charts`, `live` (notebook settings, live run)
and `view` (what the benchmark notebook displays).

Kept free of imports: `bench/anchor_bench.py` imports `measure` (torch and the standard
library) in the anchor's own environment, where qwen-tts 0.1.1 must not load.
"""
