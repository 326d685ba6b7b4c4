"""A witness of every power sample a ``wattsup`` process's tracker emits, for the load test: put
this directory on ``PYTHONPATH`` and set ``WATTSUP_TEST_WITNESS_DIR``; each tracker then also
appends ``step timestamp_ms`` of each sample it emits to ``<dir>/<pid>-<n>.steps``. What the
store holds is then compared with what was emitted, so a point lost on its way is told apart from
a step the sampler never took (a starved machine). Test-only; inert without the variable."""

import os

_DIR = os.environ.get("WATTSUP_TEST_WITNESS_DIR")
if _DIR:
    import itertools

    from mlflow_wattsup.tracking import tracker as _tracker

    _n = itertools.count()
    _init = _tracker.Tracker.__init__

    def _witnessed_init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        path = os.path.join(_DIR, f"{os.getpid()}-{next(_n)}.steps")

        def witness(sample, path=path):
            with open(path, "a") as f:
                f.write(f"{sample.step} {sample.timestamp_ms}\n")

        self.add_callback(witness)

    _tracker.Tracker.__init__ = _witnessed_init
