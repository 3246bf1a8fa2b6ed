"""Server and agent sort file names the same way (the agent cannot import the server, so
each side has its own natural_key): the snapshot browser and the diff table agree."""

from __future__ import annotations

import random

from agent.actions.diff import natural_key as agent_natural_key
from app.services.rpc import natural_key as server_natural_key

NAMES = [
    "file10", "file2", "File1", "file1.txt", "file01", "a", "B", "b10c2", "b10c10", "10", "9",
    "", "v1.10.0", "v1.9.2", "x٣", "x3", "Ä2", "ä10", "report-2024-12.pdf", "report-2024-2.pdf",
]  # fmt: skip


def test_both_sides_order_names_alike():
    shuffled = NAMES[:]
    random.Random(7).shuffle(shuffled)
    by_server = sorted(shuffled, key=lambda name: (server_natural_key(name), name))
    by_agent = sorted(shuffled, key=lambda name: (agent_natural_key(name), name))
    assert by_server == by_agent
    assert by_server.index("file2") < by_server.index("file10")
    assert by_server.index("report-2024-2.pdf") < by_server.index("report-2024-12.pdf")
