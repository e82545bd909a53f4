"""Planning: where every worker runs (placement), what one GPU holds (memory, read from the
checkpoint's headers) and whether the recipe fits (feasibility). Pure but for reading headers."""
