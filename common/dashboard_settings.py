"""rq-dashboard's settings, read from ours: `rq-dashboard --config common.dashboard_settings`.

rq-dashboard imports this module (Flask `config.from_object`) and takes its upper-case names:
the Redis URL from REDIS_URL, or through Sentinel from REDIS_SENTINELS / REDIS_SENTINEL_MASTER,
with the primary's and the Sentinels' passwords (which rq-dashboard accepts from nowhere else).
Nothing secret is on the command line. Basic auth stays with RQ_DASHBOARD_USERNAME/PASSWORD.
"""

from __future__ import annotations

import sys

from common import redisconn
from common.settings import Settings, SettingsError

try:
    _CONFIG = redisconn.dashboard_config(Settings.from_env())
except SettingsError as exc:
    sys.exit(f"ingest: {exc}")

RQ_DASHBOARD_REDIS_URL: str = _CONFIG["RQ_DASHBOARD_REDIS_URL"]
RQ_DASHBOARD_REDIS_PASSWORD: str | None = _CONFIG.get("RQ_DASHBOARD_REDIS_PASSWORD")
RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD: str | None = _CONFIG.get("RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD")
