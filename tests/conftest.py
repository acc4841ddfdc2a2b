import os

os.environ["HF_HUB_OFFLINE"] = "1"   # before huggingface_hub is imported: it reads this once

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own VOCABSEG_HOME and datasets root, and no network."""
    monkeypatch.setenv("VOCABSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOCABSEG_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    yield


torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops: one thread avoids oversubscription on a shared machine
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a test file)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """Browser and torchrun tests are slow too: ``-m "not slow"`` leaves them out."""
    for item in items:
        if item.get_closest_marker("browser") or item.get_closest_marker("dist"):
            item.add_marker(pytest.mark.slow)
