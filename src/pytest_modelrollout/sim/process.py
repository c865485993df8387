"""The simulator in a child process: what the ``sim`` provider uses by default.

Latency is the metric users care most about, so it must be measured honestly. A simulator
running in a thread of the test process competes with the tests (and the plugin's own event
loop) for the GIL: a busy moment in pytest then shows up as a slow *reply*, and a p95 gate flaps.
In its own process the simulator waits and answers on its own core's time.

One child per distinct ``MODELROLLOUT_SIM_LATENCY_SCALE`` value (read when the child starts),
started on first use. The child stops when its parent goes away (it watches its stdin pipe), so
nothing outlives the test session. ``MODELROLLOUT_SIM_INPROCESS=1`` uses the in-process
simulator instead. Under ``pytest -n N`` the controller's child serves its workers too
(:func:`adopt`), as long as they run on this machine.

Usage of the child: ``python -m pytest_modelrollout.sim.process`` prints ``PORT <n>`` and serves
until its stdin closes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading

from . import LATENCY_SCALE_ENV

INPROCESS_ENV = "MODELROLLOUT_SIM_INPROCESS"

_lock = threading.Lock()
_children: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
# latency scale -> base URL of a simulator another process started for this run: an xdist
# worker uses its controller's (adopt) rather than starting one of its own
_adopted: dict[str, str] = {}


def in_process() -> bool:
    """Whether the run asked for the in-process simulator (``MODELROLLOUT_SIM_INPROCESS``)."""
    return os.environ.get(INPROCESS_ENV, "").strip() in ("1", "true", "yes")


def _scale() -> str:
    return os.environ.get(LATENCY_SCALE_ENV, "").strip() or "1"


def adopt(url: str) -> None:
    """Use the simulator at ``url`` (the xdist controller's, at this process's latency scale)
    instead of starting one: each worker starting its own cost ~130 ms of CPU apiece while the
    run starts, on the cores the workers start on."""
    _adopted[_scale()] = url


def start_child(scale: str = "1") -> tuple[subprocess.Popen[bytes], str]:
    """A simulator of its own in a child process (latency scale ``scale``): the process and
    its base URL. :func:`stop_child` stops it; it also stops when this process goes away."""
    env = dict(os.environ)
    env[LATENCY_SCALE_ENV] = scale
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_modelrollout.sim.process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    with proc.stdout:  # the port is all the child says on it
        line = proc.stdout.readline().decode("ascii", "replace").strip()
    if not line.startswith("PORT "):
        stop_child(proc, timeout=0)
        raise RuntimeError(f"the simulator process did not start (said {line!r})")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Close the child's stdin (it stops on that), wait for it, kill it if it lingers."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=timeout)
    except Exception:  # best effort: at interpreter exit, or a child that will not stop
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=2)


def simulator_url() -> str:
    """Base URL (no ``/v1``) of a simulator in a child process, started on first use."""
    if in_process():
        from .server import get_simulator

        return get_simulator().base_url
    scale = _scale()
    adopted = _adopted.get(scale)
    if adopted is not None:
        return adopted
    with _lock:
        known = _children.get(scale)
        if known is not None:
            if known[0].poll() is None:
                return known[1]
            stop_child(known[0], timeout=0)  # gone: release its pipe before starting another
        proc, url = start_child(scale)
        _children[scale] = (proc, url)
        return url


def _stop_all() -> None:
    for proc, _ in list(_children.values()):
        stop_child(proc, timeout=2)
    _children.clear()


atexit.register(_stop_all)


def _warm(port: int) -> None:
    """Answer one request of each wire format before saying the port. A fresh process's
    first replies (the first run of its request and reply code) came tens of ms after their
    latency had passed, and the first calls of a run measured that as the model's latency:
    the example suites' candidate p95 swung 168-252 ms from run to run, 163-169 ms against a
    simulator that had answered before."""
    import http.client
    import json

    messages = [{"role": "user", "content": "warm-up"}]
    for path, body in (
        ("/v1/chat/completions", {"model": "good?latency_ms=0", "messages": messages}),
        ("/v1/messages", {"model": "good?latency_ms=0", "max_tokens": 16, "messages": messages}),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
            conn.getresponse().read()
        except OSError:  # best effort: the simulator answers all the same
            pass
        finally:
            conn.close()


def _child_main() -> None:
    from .server import SimServer

    server = SimServer().start()
    _warm(server.port)
    sys.stdout.write(f"PORT {server.port}\n")
    sys.stdout.flush()
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, KeyboardInterrupt):
        pass
    server.stop()


if __name__ == "__main__":
    _child_main()
