"""One JSON object per log line (LOG_FORMAT=json), for log shippers.

Fields passed with `extra=` become top-level keys, so a call such as
`log.info("turn completed", extra={"participant": str(p.public_id), "turn": 4})` can be searched
by participant and turn. Participants are named by their public UUID only: recruiting ids
(`external_id`, the recruiting parameters) are personal data and are dropped here even when a
caller passes them by mistake.
"""

import json
import logging
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
REDACTED_KEYS = frozenset({"external_id", "recruiting_id", "recruiting_params", "prolific_pid"})


class JsonFormatter(logging.Formatter):
    """Format a record as a single-line JSON object with its `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            entry[key] = "[redacted]" if key in REDACTED_KEYS else value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
