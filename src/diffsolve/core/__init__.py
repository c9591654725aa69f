"""Core maths, the bottom layer: errors, noise schedules, exponential-integrator coefficients,
time grids, the model wrapper and the noise sources. Nothing here knows about solvers."""

#: the package version (re-exported as ``diffsolve.__version__``)
VERSION = "0.1.0"
