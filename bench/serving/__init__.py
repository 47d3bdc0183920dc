"""The serving bench's modes (bench/serve_bench.py --mode NAME) and the set-up they share (rig.py).

A mode is a module with `run(bench: rig.Bench) -> list[figures.Figure]`, registered in serve_bench.MODES with the
rounds and seconds it is measured with by default.
"""
