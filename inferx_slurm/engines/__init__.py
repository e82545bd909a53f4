"""Engines: per backend, its command line, memory defaults, preflight needs, readiness and
metrics."""
