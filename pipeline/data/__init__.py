"""Labelled image data: the loaders, the train / calibration / validation / test splits, and the preprocessing a model expects."""
