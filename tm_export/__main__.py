"""Allow ``python -m tm_export``."""

from .cli import console_main

console_main()
