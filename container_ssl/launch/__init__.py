"""Launch: any command as a SLURM job (or local processes) through submitit; what runs inside the job."""
