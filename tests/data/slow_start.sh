# Sourced before an engine starts: a worker that is slow to come up, like one loading weights.
sleep "${INFERX_TEST_START_DELAY:-0}"
