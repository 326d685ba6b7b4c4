"""One measured run: the lifecycle every entry path shares, what is recorded into it, ``track()``,
training loops, importing other trackers' logs, the joined distributed run, the one-shot loggers
of Dice and model cost, and the ``mlflow.run_context_provider`` plugin."""
