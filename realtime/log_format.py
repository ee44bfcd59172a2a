"""LOG_FORMAT=json: one JSON object per log line, for a log pipeline (Loki, Elasticsearch, …).

Switchboard's log lines name what they are about as key=value pairs ("publish stream=user:42
seq=17 by=token:svc", "connected user=alice replica=d2"); this formatter keeps the message and
also lifts each pair into a field of its own (numbers as numbers), so a pipeline can filter by
replica, user, stream or seq without parsing text. The time, level, logger and replica are
always there and a pair never overwrites them.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

# key=value, the value up to the next space (or a quoted string).
PAIR_RE = re.compile(r'\b([a-z_]+)=("[^"]*"|[^\s,;]+)')
BASE_FIELDS = ("ts", "level", "logger", "replica", "msg", "exc")


class JsonLines(logging.Formatter):
    def __init__(self, replica: str = "") -> None:
        super().__init__()
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "replica": self.replica,
            "msg": message,
        }
        for key, raw in PAIR_RE.findall(message):
            if key in BASE_FIELDS or key in entry:
                continue
            value = raw.strip('"')
            entry[key] = int(value) if value.isdigit() and len(value) < 19 else value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
