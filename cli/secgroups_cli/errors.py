"""The one error type a user should ever see from the plugin (never a traceback), and the
exit statuses (docs/cli.md, "Exit status").

``main`` prints ``error: <message>`` on stderr and exits with the error's status.
"""

from __future__ import annotations

# 0 success; 1 a negative answer (trace: denied; lint: findings at or above --fail-on).
EXIT_OK = 0
EXIT_NEGATIVE = 1
# Bad input: flags, files that are not manifests, manifests the API server would reject,
# objects that do not exist. Fix the input; running again will not help.
EXIT_USAGE = 2
EXIT_BAD_INPUT = EXIT_USAGE
# The cluster could not be used: no kubeconfig, unreachable, an API error. The input
# may be fine; running again later may help.
EXIT_CLUSTER = 3
# A bug in the plugin (an exception nobody expected): one line, and KSG_DEBUG=1 shows
# the traceback.
EXIT_INTERNAL = 4
# Interrupted (Ctrl-C), as shells report SIGINT.
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """Bad input or an unusable cluster; the message is complete and user-facing."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
