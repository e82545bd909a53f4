"""Results: the table, comparison against a baseline, the Pareto view, provenance and the
CI archive."""
