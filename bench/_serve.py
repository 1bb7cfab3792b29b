"""`followup serve`'s engine on another prefect.yaml: the subprocess bench_e2e.py and
bench_throughput.py start (bench/_helpers.py: served_engine).

    python bench/_serve.py PREFECT_YAML

DATABASE_URL, PREFECT_API_URL, FOLLOWUP_MLLP_PORT and FOLLOWUP_HTTP_PORT come from the
environment; SIGTERM stops it as it stops `followup serve`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from followup.gateway.serve import serve_engine
    from followup.settings import get_settings

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    serve_engine(get_settings(), prefect_yaml=Path(sys.argv[1]))


if __name__ == "__main__":
    main()
