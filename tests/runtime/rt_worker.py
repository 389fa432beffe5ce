"""`python -m tests.runtime.rt_worker`: the rttest worker as its own process (for crash tests)."""

from __future__ import annotations

import asyncio

from contracts.observability import setup_logging
from contracts.settings import Settings
from tests.runtime.rt_app import build_worker

if __name__ == "__main__":
    settings = Settings.from_env()
    setup_logging("worker-rttest", settings.log_level, settings.log_format)
    asyncio.run(build_worker(settings).run_forever())
