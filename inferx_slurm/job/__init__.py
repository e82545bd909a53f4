"""The job: the deployment built once from recipe + site, its rendered scripts and sbatch
parameters, the job-directory contract, and the Slurm backend that submits and watches it."""
