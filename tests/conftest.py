from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    # the suite runs on 2 cores; tests compete for them less with fixed thread counts
    torch.set_num_threads(2)


@pytest.fixture
def shared_data() -> Path:
    folder = SHARED_DATA / "pix2pix-cats"
    if not folder.is_dir():
        pytest.skip(f"sample data not found at {folder} (../shared/data beside the checkout)")
    return folder
