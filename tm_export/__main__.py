"""Allow ``python -m tm_export``."""

from .entry import console_main

console_main()
