"""tm-export: archive HOT Tasking Manager API data to JSON Lines, resumably and exactly once."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tm-export")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
