"""Per-epoch series in nnU-Net's logger (``logger.local_logger.my_fantastic_logging``)."""

from __future__ import annotations

__all__ = ["pad_logged_series"]


def pad_logged_series(logger, keys, epochs: int) -> None:
    """Give each of ``keys`` in nnU-Net's logger (``logger.local_logger``) ``epochs`` values:
    a resumed run whose checkpoint predates a key gets NaN for the epochs it missed."""
    logged = logger.local_logger.my_fantastic_logging
    for key in keys:
        values = logged.setdefault(key, [])
        values.extend([float("nan")] * (epochs - len(values)))
