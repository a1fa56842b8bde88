import numpy as np
import pytest


@pytest.fixture
def rs():
    seed = 1234
    print(f"numpy seed {seed}")
    return np.random.RandomState(seed)


def gaussian(rs, n, d, centres=20, spread=4.0):
    c = spread * rs.randn(centres, d).astype("float32")
    return (c[rs.randint(0, centres, n)] + rs.randn(n, d)).astype("float32")


def pytest_configure(config):
    # python3-faiss 1.7.3's loader uses distutils' LooseVersion
    config.addinivalue_line("filterwarnings", "ignore:distutils Version classes:DeprecationWarning")
