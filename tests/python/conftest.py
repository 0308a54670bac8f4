"""Fixtures for the Python-client tests: a real `mast server` per test module.

The binary comes from $MAST_BIN, else from the cargo target dir
($CARGO_TARGET_DIR or ./target) debug build, which `scripts/test` builds first.
Every server is killed by PID when its fixture ends, even on failure.
"""
import os
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def mast_bin():
    if os.environ.get("MAST_BIN"):
        return os.environ["MAST_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    path = os.path.join(target, "debug", "mast")
    if not os.path.exists(path):
        pytest.fail(f"{path} not found: run `cargo build -p mast` or set MAST_BIN")
    return path


class Server:
    """A `mast server` process on a free loopback port."""

    def __init__(self, data_dir, *args):
        self.data_dir = data_dir
        self.args = list(args)
        self.proc = None
        self.port = None
        self.kubeconfig = None

    def start(self, listen="127.0.0.1:0"):
        self.proc = subprocess.Popen(
            [mast_bin(), "server", "--data-dir", self.data_dir, "--listen", listen, *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "MAST_LOG": "warn"},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("mast exited before it was ready")
            if line.startswith("mast API server is up: "):
                self.port = int(line.strip().rsplit(":", 1)[1])
            if line.strip().startswith("export KUBECONFIG="):
                self.kubeconfig = line.strip().split("=", 1)[1]
                return self
        raise RuntimeError("mast did not become ready within 60s")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self):
        self.kill9()
        return self.start(f"127.0.0.1:{self.port}")

    def client(self):
        from kubernetes import client, config
        cfg = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, client_configuration=cfg)
        return client.ApiClient(cfg)


@pytest.fixture
def mast(request):
    args = getattr(request, "param", [])
    with tempfile.TemporaryDirectory() as d:
        s = Server(d, *args).start()
        try:
            yield s
        finally:
            s.kill9()
