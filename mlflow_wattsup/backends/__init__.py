"""Where MLflow Project runs execute - this machine (:mod:`.local`, bounded concurrency)
or a SLURM cluster (:mod:`.slurm`, also an MLflow project backend named ``slurm``)."""
