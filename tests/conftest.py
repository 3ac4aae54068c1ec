import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("CFRG_DATA", ROOT.parent / "shared" / "data"))
DEMO_ROOT = ROOT / "data" / "demo"


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "magnetic_tile").is_dir():
        pytest.skip(f"real data not found at {DATA_ROOT} (set CFRG_DATA)")
    return DATA_ROOT
