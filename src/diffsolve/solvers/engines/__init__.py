"""Engines shared by solver families. A solver file imports engines and ``solvers.base`` only,
never another solver file.

* :mod:`.stages` -- single-step exponential Runge-Kutta: a checked :class:`StageTable` and the
  code that precomputes and runs its stages (DDIM, DPM-Solver-k, DPM-Solver++(kS), SEEDS, and
  every single-step warm-up).
* :mod:`.history` -- multistep methods: the per-step order rules (warm-up ramp, lower order at
  the end, per-step caps), the ONE warm-up schedule, and the linear multistep update
  x' = lin x + sum_j w_j F_{i-j} + noise.
* :mod:`.model_statistics` -- DPM-Solver-v3's empirical model statistics and their exact
  piecewise integrals.
"""
