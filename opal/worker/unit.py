"""A systemd unit that keeps one dataset's worker up on an operator node.

``opal worker unit --dataset cdr --key olga`` prints it; the README shows how
to install it. systemd restarts the worker when it exits with an error
(``Restart=on-failure``) and stops it with SIGTERM, which a Celery worker takes
as a warm shutdown (runs in flight finish; a run cut short is recovered by the
next worker, see ``opal.worker.recovery``).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from opal.errors import BadInputError

__all__ = ["systemd_unit"]

# What a worker reads from its environment and a unit must therefore carry.
_PASSED_ON = ("OPAL_BROKER_URL", "OPAL_DB_URL", "OPAL_QUEUE_PREFIX", "OPAL_RUN_TIMEOUT", "OPAL_RECOVERY_INTERVAL")


def _quoted(value: str) -> str:
    # systemd.syntax(7): a double-quoted word; backslash and quote escaped.
    if any(c in value for c in "\n\r"):
        raise BadInputError("a worker setting holds a line break; a systemd unit cannot carry it")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(*, home: Path, dataset: str, key: str | None, concurrency: int, user: str | None) -> str:
    """The text of a ``.service`` unit that runs ``opal worker start`` for ``dataset``."""
    command = [sys.executable, "-m", "opal", "worker", "start", "--dataset", dataset,
               "--concurrency", str(concurrency)]
    if key:
        command += ["--key", key]
    env = {"OPAL_HOME": str(home.resolve())}
    env.update({k: os.environ[k] for k in _PASSED_ON if os.environ.get(k)})
    lines = [
        "[Unit]",
        f"Description=OPAL worker for dataset {dataset}",
        "After=network-online.target redis-server.service postgresql.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    if user:
        lines.append(f"User={user}")
    lines += [f"Environment={_quoted(f'{k}={v}')}" for k, v in env.items()]
    lines += [
        f"WorkingDirectory={_quoted(str(home.resolve()))}",
        "ExecStart=" + " ".join(_quoted(part) if not shlex.quote(part) == part else part for part in command),
        "Restart=on-failure",
        "RestartSec=5",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=660",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
