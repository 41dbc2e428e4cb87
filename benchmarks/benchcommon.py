"""What every benchmark script shares: the repository on ``sys.path`` (so a script runs from a checkout without an
install), where the real images are, and the load average printed beside every table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def data_root() -> Path:
    """``$SSLBENCH_DATA``, or ``../shared/data`` beside the repository."""
    env = os.environ.get("SSLBENCH_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages: a benchmark means something only on an otherwise idle machine."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())
