"""Studies - a cohort x pipelines x devices as one MLflow parent run with a child run per
subject x pipeline x device, run on this machine or on SLURM (``wattsup study``)."""
