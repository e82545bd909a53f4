# SIMULATION, for benchmarks/bench_sweep.py only: sourced before each mock engine starts, it
# stands in for a real model load (the mock engines load nothing and start in about a second).
sleep "${INFERX_SIMULATED_LOAD_S:-0}"
