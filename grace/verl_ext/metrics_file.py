"""A JSON-lines copy of verl's step metrics: `+trainer.metrics_file=PATH`.

verl 0.4.1's loggers are consoles and remote services; the demo report and the tests need the per-step numbers
in a file. `fit()` builds its logger from `verl.utils.tracking.Tracking` at run time, so the TaskRunner replaces
that class, in its own process only, with a subclass that also appends one JSON object per step to PATH.
"""

from __future__ import annotations

import json
import numbers


def install() -> None:
    import verl.utils.tracking as tracking

    if getattr(tracking.Tracking, "_grace_metrics_file", False):
        return
    base = tracking.Tracking

    class TrackingWithMetricsFile(base):
        _grace_metrics_file = True

        def __init__(self, project_name, experiment_name, default_backend="console", config=None):
            super().__init__(project_name, experiment_name, default_backend=default_backend, config=config)
            self.metrics_file = ((config or {}).get("trainer") or {}).get("metrics_file")

        def log(self, data, step, backend=None):
            super().log(data, step, backend=backend)
            if self.metrics_file:
                record = {"step": step, **{k: float(v) for k, v in data.items() if isinstance(v, numbers.Number)}}
                with open(self.metrics_file, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

    tracking.Tracking = TrackingWithMetricsFile
