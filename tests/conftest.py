"""Test setup: offline hub, small thread count, a private cache for corpora and tokenizers."""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser):
    """The benchmark options (used by tests/bench/conftest.py)."""
    g = parser.getgroup("esolm-bench", "esolm benchmarks (tests/bench; run with --benchmark-only)")
    g.addoption("--bench-device", default="cpu", help="cpu (default) or cuda")
    g.addoption("--bench-lengths", default=None,
                help="comma-separated L; default 256,1024 on cpu and 2048,8192 on cuda")
    g.addoption("--bench-quick", action="store_true",
                help="L = 256 only, one round, small training / likelihood runs (a smoke run)")
    g.addoption("--bench-full-upto", type=int, default=None,
                help="MDLM and the uncached samplers run in full up to this L and subsampled above "
                     "(default 256 on cpu, 2048 on cuda; 0 = always subsampled; a huge value = never)")
    g.addoption("--bench-rounds", type=int, default=None, help="timed rounds per configuration (default 3)")
    g.addoption("--bench-warmup", type=int, default=None, help="untimed warm-up runs (default 1)")
    g.addoption("--bench-threads", type=int, default=None,
                help="torch threads (default: all cores, or 1 when the load average is above half of them)")
    g.addoption("--bench-vocab", type=int, default=None, help="vocabulary size (default 50258, GPT-2 + mask)")
    g.addoption("--bench-alt-vocab", type=int, default=None,
                help="second vocabulary for the AR / Eso-LM (B) cached pair (default 2049; 0 = skip)")
    g.addoption("--bench-preset", default=None, help="run name whose backbone is timed (default spec-tiny: d=256, 8 layers, 8 heads)")
    g.addoption("--bench-out", default=None,
                help="JSON path (default results/bench/<device>-<date>.json; full runs also "
                     "overwrite results/bench/<device>-latest.json)")


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
