"""Allow ``python -m tm_export``."""

from .cli import main

main()
