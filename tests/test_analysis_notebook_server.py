"""`make notebook`: JupyterLab over the repository with jupytext's contents manager, so the py:percent
notebooks in analysis/notebooks/ open as notebooks, with a kernel from .venv that imports `analysis`
and sees the Makefile's MLFLOW_TRACKING_URI."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

import pytest

from conftest import REPO

NOTEBOOK = "analysis/notebooks/compare_architectures.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, token: str, method: str = "GET", body: dict | None = None):
    """(HTTP status, JSON body) of one call to the server's REST API."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


async def _execute(ws_url: str, code: str) -> str:
    """Run `code` in a kernel over its websocket (the Jupyter messaging protocol); its stdout."""
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(ws_url)
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
              "version": "5.3", "date": datetime.now(timezone.utc).isoformat()}
    await ws.write_message(json.dumps({
        "header": header, "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False}}))
    out = []
    while True:
        msg = json.loads(await ws.read_message())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            ws.close()
            return "".join(out)


@pytest.mark.slow  # ~10 s once `make install-notebooks` has run (CI runs it): JupyterLab and a kernel
def test_make_notebook_serves_the_py_notebooks_as_notebooks_with_a_kernel_that_imports_analysis(tmp_path):
    pytest.importorskip("jupyterlab", reason="make install-notebooks (CI installs it)")
    pytest.importorskip("jupytext", reason="make install-notebooks (CI installs it)")
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the Makefile's default
    env.update(NOTEBOOK_TOKEN=token, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    log = tmp_path / "notebook.log"
    with open(log, "w") as out:
        server = subprocess.Popen(["make", "-s", "notebook", f"NOTEBOOK_PORT={port}"], cwd=REPO, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a first `make notebook` installs JupyterLab first
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                if _request(f"{base}/api/status", token)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        assert f"{base}/lab/tree/{NOTEBOOK}?token={token}" in log.read_text()  # the URL it prints

        status, model = _request(f"{base}/api/contents/{NOTEBOOK}?type=notebook", token)
        assert status == 200 and model["type"] == "notebook" and model["format"] == "json"
        cells = model["content"]["cells"]
        assert {c["cell_type"] for c in cells} == {"markdown", "code"} and len(cells) > 4
        assert any("load_campaign(CAMPAIGN)" in c["source"] for c in cells)
        assert model["content"]["metadata"]["jupytext"]["formats"] == "py:percent"
        status, listing = _request(f"{base}/api/contents/analysis/notebooks", token)
        assert status == 200 and {f["name"] for f in listing["content"]} >= {"compare_architectures.py",
                                                                             "study_analysis.py"}

        status, kernel = _request(f"{base}/api/kernels", token, "POST", {"name": "python3"})
        assert status == 201, status
        ws = f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}"
        code = "import os, sys, analysis; print(analysis.__file__); print(os.environ['MLFLOW_TRACKING_URI'])"
        printed = asyncio.run(asyncio.wait_for(_execute(ws, code), 120)).split()
        assert printed == [str(REPO / "analysis" / "__init__.py"), f"sqlite:///{REPO}/mlruns/mlflow.db"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # JupyterLab stops its kernels on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
