"""The tests' own threaded HTTP servers (fake providers, a proxy)."""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class QuietHTTPServer(ThreadingHTTPServer):
    """A client that went away (a timeout, a cancelled call) ends its request without a
    traceback. socketserver prints one from the request's thread, and CPython 3.11 parses
    source to place its carets: an AST parse off the main thread, which can fail the parse
    of a test module that another test's in-process run imports at that moment (gh-106905)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)
