"""Where candidates run: the Ray connection, the evaluator pool, the reaper of a local Ray, and job submission."""
