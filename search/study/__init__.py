"""The Optuna study of a search: storage and sampler, the space, the baselines, power-law fits and steering, and what a resume may change."""
