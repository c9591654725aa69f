"""Drivers: the loops that run solvers (the sampling loop, its compiled form, the one-evaluation
Stepper, adaptive steps, inversion, multilevel Euler-Maruyama, mean-reverting diffusions)."""
