"""Run the web app in a background thread on a free loopback port (for tests, benchmarks, screenshots)."""

from __future__ import annotations

import threading
import time

from samadapt.errors import ConfigError


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` with uvicorn at ``url`` until the block ends.

    The port is chosen by the operating system (port 0), so parallel runs never collide.
    """

    def __init__(self, app, host: str = "127.0.0.1", startup_timeout_s: float = 30.0):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=0, log_level="warning", access_log=False)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="samadapt-serve", daemon=True)
        self.timeout = startup_timeout_s
        self.url = ""

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the web app did not start (see the log above)")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.config.host}:{port}"
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.timeout)
