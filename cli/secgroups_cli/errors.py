"""The one error type a user should ever see from the plugin (never a traceback).

``main`` prints ``error: <message>`` on stderr and exits with :data:`EXIT_USAGE`.
"""

from __future__ import annotations

# Exit statuses (docs/cli.md): 0 success, 1 a negative answer (trace: denied; lint:
# findings at or above --fail-on), 2 bad input (flags, files, unknown objects, cluster
# unreachable).
EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2


class CliError(Exception):
    """Bad input or an unreachable cluster; the message is complete and user-facing."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
