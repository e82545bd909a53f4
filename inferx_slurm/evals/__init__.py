"""Accuracy evals on a running deployment: task data, the runner and the gate."""
