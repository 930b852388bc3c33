"""`twistd -n idtronic --config FILE`: the same service as `idtronic-tel run`."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from .config import ConfigError, load_config, prepare_data_dir, resolve_config_path, resolve_data_dir


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "configuration file (default: $IDTRONIC_CONFIG, or none)"],
        ["data-dir", "d", None, "data directory (default: $IDTRONIC_DATA_DIR or ./idtronic-data)"],
    ]
    optFlags = [["demo", None, "start the built-in SMSC and Asterisk simulators too"]]


def makeService(options: Options) -> IService:
    from .runner import make_service

    environ = dict(os.environ)
    data_dir = resolve_data_dir(Path(options["data-dir"]) if options["data-dir"] else None, environ)
    path = resolve_config_path(Path(options["config"]) if options["config"] else None, environ)
    try:
        prepare_data_dir(data_dir, path, environ)
        config = load_config(path, data_dir, environ)
    except ConfigError as exc:
        raise usage.UsageError(f"configuration error: {exc}") from None
    if options["demo"]:
        config = replace(config, demo=replace(config.demo, enabled=True))
    return make_service(config)
