"""What runs inside the Slurm allocation: the driver that starts every step, watches it,
benchmarks the deployment and leaves nothing running."""
