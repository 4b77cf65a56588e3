"""Repairing a pruned network without training: least-squares reconstruction, BatchNorm recalibration, and the signal-collapse diagnostic."""
