"""A mock HOT Tasking Manager API (v5.5.2 shapes) for testing tm-export without the network.

``MockServer`` serves a deterministic generated dataset on a loopback port from a background
thread; ``serve()`` runs one in the foreground (``python -m tm_export.mock``). The record counts
an export should reach come from ``Dataset.counts()``; fault rules (``tm_export.mock.faults``)
inject errors, latency, dropped connections and broken pages on chosen requests.
"""

from tm_export.mock.dataset import Dataset
from tm_export.mock.faults import FaultRule
from tm_export.mock.server import MockServer, ServeError, serve

__all__ = ["Dataset", "FaultRule", "MockServer", "ServeError", "serve"]
