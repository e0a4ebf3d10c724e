"""Start `armor serve` as a real process on 127.0.0.1 and talk to it."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from conftest import ROOT

API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, engine: str, *extra: str, api_key: str | None = API_KEY, name: str = "smollm2-armor"):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.name, self.model, self.engine = name, model, engine
        cmd = [sys.executable, "-m", "armor_serve", "serve", "--model", str(model), "--engine", engine, "--port",
               str(self.port), "--served-model-name", name, "--max-model-len", "1024", *extra]
        if api_key:
            cmd += ["--api-key", api_key]
        if engine == "vllm":
            cmd += ["--enforce-eager", "--memory-fraction", "0.2"]
        # stderr to a file, not a pipe: a pipe nobody reads fills up and blocks a chatty server
        self.log = tempfile.NamedTemporaryFile("w+", prefix="armor-serve-", suffix=".log")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log, text=True,
                                     env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})

    def wait_ready(self, timeout: float = 600) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr()[-4000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError("server did not become healthy")

    def stderr(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=self.base + "/v1", api_key=API_KEY, max_retries=0, **kw)

    def metric(self, name: str, **labels) -> float:
        text = httpx.get(self.base + "/metrics").text
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def server_errors(self) -> float:
        """Requests this server answered with a 5xx, all endpoints (its armor_requests_total)."""
        text = httpx.get(self.base + "/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("armor_requests_total{") and re.search(r'status="5\d\d"', line))

    def stop(self, sig=signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)  # the log file lives on with this object: read it after stopping
