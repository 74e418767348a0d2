"""Tests run on CPU in float64 unless a test says otherwise."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
