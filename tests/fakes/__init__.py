"""Local servers that speak the real wire protocol of external systems, so tests run the real clients.

One module per system (e.g. :mod:`tests.fakes.receiver`, the HTTP receiver of the ``http`` connector);
each server listens on 127.0.0.1 on a free port and is stopped by the test that started it.
"""
