"""Launch: distributed set-up (single process, torchrun, SLURM) and submitit jobs."""
