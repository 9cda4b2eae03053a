"""Checks a command runs before it starts any work (kept out of the command modules so they stay small)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from bhsearch.errors import UsageError
from bhsearch.fileio import check_writable

#: Modules Ray's dashboard needs beyond ``ray[tune]`` (they come with ``ray[default]``).
DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "prometheus_client")
DASHBOARD_HINT = "pip install 'bhsearch[dashboard]' (or 'ray[default]')"


def check_dashboard(host: str | None) -> None:
    """``--dashboard-host`` needs Ray's dashboard packages: say how to install them instead of failing in Ray."""
    if not host:
        return
    missing = [name for name in DASHBOARD_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"--dashboard-host needs Ray's dashboard packages (missing {', '.join(missing)}): {DASHBOARD_HINT}"
        )


def check_tune(study: Any, storage: str | None, dashboard_host: str | None) -> None:
    """Before Ray starts: the run folder can be written, and the dashboard can be served if asked for."""
    root = Path(storage) if storage else Path(study.storage)
    check_writable(root / study.name, "--storage" if storage else "study storage")
    check_dashboard(dashboard_host)


__all__ = ["DASHBOARD_HINT", "DASHBOARD_MODULES", "check_dashboard", "check_tune"]
