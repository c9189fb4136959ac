import mlx.core as mx
import pytest


@pytest.fixture(autouse=True)
def _cpu_float32_defaults():
    # Parity tests run in float32 on the CPU stream; keep every test starting from the same state.
    mx.random.seed(0)
    yield


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail a test if any model component is built (bad input must be rejected before any heavy work)."""
    from ltx_mlx.weights.load import LTXModelBundle

    def refuse(self, name, loras=()):
        raise AssertionError(f"{name} was built before the input was checked")

    monkeypatch.setattr(LTXModelBundle, "load_component", refuse)
