"""Sweeps: expanding topologies x scenarios x concurrency into deployments, packing them
into allocations, submitting them in a mode, and the sweep root's state on disk."""
