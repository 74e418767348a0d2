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


@pytest.fixture
def native_kernel():
    """Skip, saying why, where the native kernel cannot run (the tests of its own paths use it)."""
    from genenet import native

    if not native.available(torch.float64):
        pytest.skip(f"no native kernel here: {native.reason(torch.float64)}")


def pytest_collection_modifyitems(config, items):
    # `heavy` tests take over 15 s each on the torch loop (minutes for the fits): where the native kernel
    # cannot run (no C compiler and no kernel built at install) they are skipped and say why, as the
    # GENENET_NATIVE=0 pass of README's test command leaves them out; everything else runs on the torch loop
    from genenet import native

    if native.available(torch.float64) or native.reason(torch.float64).startswith("disabled"):
        return
    skip = pytest.mark.skip(reason=f"heavy: needs the native kernel ({native.reason(torch.float64)})")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
