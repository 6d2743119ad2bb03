"""The package logger: one `LOGGER` that prints plain lines, like Ultralytics' console output."""

import logging
import os

__all__ = ["LOGGER", "colorstr"]


def _make_logger() -> logging.Logger:
    logger = logging.getLogger("otadet")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    # Only rank 0 talks in a distributed run.
    rank = int(os.environ.get("RANK", "0"))
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    return logger


LOGGER = _make_logger()


def colorstr(text: str) -> str:
    """Bold text on a terminal, plain text elsewhere (CI logs, files)."""
    if os.environ.get("NO_COLOR") or not os.isatty(2):
        return text
    return f"\033[1m{text}\033[0m"
