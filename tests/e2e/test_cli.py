"""The command line: `run-all` supervises every process with prefixed logs and stops cleanly;
`asyncapi` prints the document; a misconfiguration refuses to start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.support import Stack, free_port


def test_run_all_supervises_and_stops_cleanly(stack: Stack) -> None:
    env = {**stack.env, "EDGE_PORT": str(free_port()), "RELAY_PORT": str(free_port()), "LOG_FORMAT": "text"}
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "run-all"], cwd=stack.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    names = ("edge", "relay", "users", "patients", "imaging", "system")
    ready_marks = {"edge": "edge ready", "relay": "relay ready"}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = "".join(lines)
            if all(any(line.startswith(f"{n} ") and ready_marks.get(n, "worker started") in line
                       for line in text.splitlines()) for n in names):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("not every process came up:\n" + "".join(lines)[-3000:])
        ready = httpx.get(f"http://127.0.0.1:{env['EDGE_PORT']}/ready", timeout=10)
        assert ready.status_code == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    out = "".join(lines)
    assert "run-all: stopped" in out
    assert not any("restarting" in line for line in out.splitlines()), out[-2000:]
    for name in ("users", "patients", "imaging", "system"):
        assert any(line.startswith(f"{name} ") and "worker stopped" in line for line in out.splitlines()), name


def test_asyncapi_command_prints_the_document(stack: Stack) -> None:
    done = subprocess.run([sys.executable, "-m", "workers.cli", "asyncapi"], cwd=stack.root, env=stack.env,
                          capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(done.stdout)
    assert "users.create_department" in doc["channels"]


@pytest.mark.parametrize("override", [
    {"ENVIRONMENT": "production"},  # the development JWT secret and pepper are refused
    {"JWT_SECRET": "short"},
    {"DATABASE_URL": "mysql://nope"},
    {"ACCESS_TOKEN_TTL": "fifteen minutes"},
])
def test_misconfiguration_refuses_to_start(stack: Stack, override: dict[str, str]) -> None:
    env = {k: v for k, v in stack.env.items() if k not in ("JWT_SECRET", "SIGNING_KEY_PEPPER")}
    done = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "users"], cwd=stack.root,
                          env={**env, **override}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "configuration error" in done.stderr
