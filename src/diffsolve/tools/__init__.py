"""Tools built on the drivers: sharded generation, grid search / tuning, DPM-Solver-v3
calibration."""
