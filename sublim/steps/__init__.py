"""Pipeline steps, one module per stage of the pipeline; each registers its functions by name (sublim.job.step)."""
