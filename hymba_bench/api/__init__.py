"""The contracts the rest of hymba-bench is written against, importing none of their
implementations: a run's vocabulary (`api.run`: designs, jobs, stages, units, executors,
progress) and the metrics it records (`api.metrics`: one declaration each)."""
