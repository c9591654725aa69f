"""Shared fixtures: analytic models with known answers."""

from __future__ import annotations

import pytest

from analytic import GaussianData


@pytest.fixture
def gaussian_data() -> GaussianData:
    return GaussianData([0.5, -1.0, 2.0, 0.0], [0.3, 1.5, 0.05, 1.0])
