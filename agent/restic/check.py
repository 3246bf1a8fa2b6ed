"""``restic check``: text (JSON only from 0.18, which the agent does not need); exclusive lock.

Exit 0 even when packs are unreferenced (sample E31); ``Fatal: repository contains
errors`` and exit 1 on damage (E60).
"""

from typing import Optional, Tuple


def check_argv(binary: str = "restic", read_data_subset: Optional[str] = None) -> Tuple[str, ...]:
    """``--read-data-subset=n/t|x%|size`` reads that part of the pack files back."""
    if read_data_subset:
        return (binary, "check", f"--read-data-subset={read_data_subset}")
    return (binary, "check")
