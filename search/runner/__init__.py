"""Running one search: the driver, the run-folder lock, checks before the first candidate, the base model, progress."""
