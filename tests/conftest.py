import mlx.core as mx
import pytest


@pytest.fixture(autouse=True)
def _cpu_float32_defaults():
    # Parity tests run in float32 on the CPU stream; keep every test starting from the same state.
    mx.random.seed(0)
    yield
