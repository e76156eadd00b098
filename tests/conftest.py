"""Test setup: offline hub, small thread count, a private cache for corpora and tokenizers."""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    """One intra-op thread when the machine is busy: two spinning threads per process on a
    loaded 2-core machine run many times slower. ESOLM_TEST_THREADS overrides."""
    threads = os.environ.get("ESOLM_TEST_THREADS")
    if threads is None and os.getloadavg()[0] > (os.cpu_count() or 1) * 0.75:
        threads = "1"
    if threads is not None:
        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Corpora and tokenizers built by the tests go to a per-session folder (reused across tests)."""
    if "ESOLM_CACHE" not in os.environ:
        os.environ["ESOLM_CACHE"] = str(tmp_path_factory.mktemp("esolm-cache"))
    yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
