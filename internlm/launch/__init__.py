"""Launching runs on clusters (program floor): Slurm layout checks, the sweep summary callback,
and the submitit settings our Slurm launcher presets rely on (conf/hydra/launcher/)."""
