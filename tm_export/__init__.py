"""tm-export: archive HOT Tasking Manager API data to JSON Lines, resumably and exactly once."""

# The one place the version is written; pyproject.toml reads it from here. A literal, not
# importlib.metadata, which would add about 50 ms to the start of every command.
__version__ = "0.1.0"

__all__ = ["__version__"]
