"""A real TransferRank service on a free port (uvicorn in a thread, SQLite in a temp data dir,
fast encoders) for the client, selector and integration tests. No mocks: HTTP over a socket."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

FAST_BASE = "glove-6b-50d"
FAST_MODELS = ["glove-6b-50d", "tfidf-svd"]


class LiveServer:
    def __init__(self, data_dir: Path, **overrides):
        import uvicorn

        from app.core.config import Settings
        from app.main import create_app

        overrides.setdefault("base_encoder", FAST_BASE)
        overrides.setdefault("seed_demo", False)
        overrides.setdefault("train_demo_esms", False)
        overrides.setdefault("log_level", "WARNING")
        self.settings = Settings.from_env({}, data_dir=data_dir, **overrides)
        self.app = create_app(self.settings)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self._sock = sock
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    @property
    def ctx(self):
        return self.app.state.ctx

    def start(self, timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self._sock.close()
