"""How a full runner's `main` ends on bad input: the one line and exit status 2.

(A multi-process run ends with its framework's own teardown; see torch_runtime for gloo.)
"""

from __future__ import annotations

from collections.abc import Callable

from fourways.contract.errors import UsageError, fail


def run_main(main: Callable[[], None]) -> None:
    """Entry-point guard: a UsageError becomes the contract's one line and exit status 2."""
    try:
        main()
    except UsageError as err:
        fail(str(err))
