"""Job launchers for sora: local multi-rank runs and Slurm batch jobs (`sora-launch`)."""
