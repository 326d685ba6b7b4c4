"""Hardware readers. No MLflow here; every reader returns plain dataclasses.

- :mod:`.rapl` - CPU package and DRAM energy counters (powercap sysfs)
- :mod:`.nvml` - NVIDIA GPU energy counters / power
- :mod:`.amdsmi` - AMD GPU energy counters / power (amdsmi, ROCm)
- :mod:`.sanity` - is a counter telling the truth (stalls, counters running backwards, jumps)
- :mod:`.slurm` - SLURM's own energy accounting of the job step (sstat, sacct, scontrol)
- :mod:`.proctree` - CPU seconds and memory of a process tree, machine busy CPU seconds
- :mod:`.estimator` - power models for machines without readable counters
- :mod:`.hardware` - CPU model, topology, memory
"""
