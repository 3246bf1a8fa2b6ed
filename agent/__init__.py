"""restic-manager agent: runs on every backed-up host (Python 3.9+, never imports the server)."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
