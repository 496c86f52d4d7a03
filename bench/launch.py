"""Run a command and write its own peak RSS, CPU and wall time as JSON.

    python -I bench/launch.py REPORT.json COMMAND [ARGUMENT ...]

Why not measure from the benchmark process directly: on Linux, a process keeps the
peak RSS of the address space it had before ``exec``, and a child forked from a large
parent starts with the parent's. Started from this small launcher, the command's
``ru_maxrss`` is its own. The report contains ``status`` (the wait status), ``wall_s``,
``started_monotonic`` (``time.monotonic()`` just before the fork), ``maxrss_kb``,
``user_s`` and ``system_s``. The launcher exits 0 once the report is written.
SIGTERM to the launcher kills the command with SIGKILL, and the report still follows.
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    report, command = sys.argv[1], sys.argv[2:]
    started_monotonic = time.monotonic()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signal.SIGKILL))
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    result = {
        "status": status,
        "wall_s": wall,
        "started_monotonic": started_monotonic,
        "maxrss_kb": usage.ru_maxrss,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
    }
    with open(report, "w") as file:
        json.dump(result, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
