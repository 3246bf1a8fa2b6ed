"""Sizes and durations the way people read them in a job log."""

from typing import Union

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: Union[int, float]) -> str:
    """``3003545`` → ``2.9 MiB``; below 1 KiB the exact byte count."""
    if size < 1024:
        return f"{int(size)} B"
    value = float(size)
    for unit in _BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_seconds(seconds: Union[int, float]) -> str:
    """``0.236`` → ``0.2 s``; ``75`` → ``1 min 15 s``; ``3720`` → ``1 h 2 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"
