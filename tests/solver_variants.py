"""Every registered solver with each of its order, warm-up, corrector and form options
(enumerated from the solvers' own option fields by :mod:`diffsolve.solvers.catalog`)."""

from diffsolve.solvers.catalog import all_variants, option_variants, variant_id

__all__ = ["all_variants", "option_variants", "variant_id"]
