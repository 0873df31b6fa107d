"""Where the serve loop runs, and how a case talks to it: in a thread of this process
(:class:`ThreadHandler`), in a forked process (:class:`ProcessHandler`), or in a fresh
``python -m lib.kernel.handler`` process that receives the uffd and the source memfd by
SCM_RIGHTS (:class:`SpawnedHandler`, the way a VMM hands the uffd of a guest to its memory
server).  The two remote placements answer the same control interface over a unix socket (JSON
lines, :func:`rpc_loop`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import asdict

from lib.kernel import abi, libc
from lib.kernel.handler.options import Options, Stats
from lib.kernel.handler.serve_loop import FaultServer
from lib.kernel.handler.source import Source
from lib.kernel.tasks import reap
from lib.kernel.uffd import Userfaultfd

# the repository root (lib/kernel/handler/placements.py is four levels down): the spawned
# handler's working directory and PYTHONPATH
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class ThreadHandler:
    """Serve in a thread of this process."""

    topology = "thread"

    def __init__(self, uffd: Userfaultfd, base: int, size: int, page_size: int,
                 source: Source | None = None, options: Options | None = None) -> None:
        self.server = FaultServer(uffd, base, size, page_size, source.addr if source else 0, options)

    def start(self) -> ThreadHandler:
        self.server.start()
        return self

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def stats(self) -> Stats:
        return self.server.snapshot()

    def read_blocked(self) -> bool:
        return self.server.read_blocked()

    def install_barrier(self, page: int, point: str) -> int:
        return self.server.install_barrier(page, point)

    def wait_held(self, token: int, timeout: float = 5.0) -> None:
        self.server.wait_held(token, timeout)

    def release(self, token: int) -> None:
        self.server.release(token)

    def stop(self) -> Stats:
        return self.server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _RemoteHandler:
    """Client side of a handler living in another process (JSON lines over a unix socket)."""

    topology = "remote"
    sock: socket.socket
    pid: int

    def _call(self, op: str, timeout: float = 15.0, **args):
        self.sock.settimeout(timeout)
        self.sock.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        line = self._rfile.readline()
        if not line:
            raise ConnectionError(f"handler process {self.pid} went away during {op}")
        reply = json.loads(line)
        if "error" in reply:
            kind = TimeoutError if reply.get("kind") == "TimeoutError" else RuntimeError
            raise kind(reply["error"])
        return reply.get("value")

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def stats(self) -> Stats:
        return stats_from_json(self._call("stats"))

    def read_blocked(self) -> bool:
        return self._call("read_blocked")

    def install_barrier(self, page: int, point: str) -> int:
        return self._call("install_barrier", page=page, point=point)

    def wait_held(self, token: int, timeout: float = 5.0) -> None:
        self._call("wait_held", timeout=timeout + 5, token=token, wait=timeout)

    def release(self, token: int) -> None:
        self._call("release", token=token)

    def stop(self) -> Stats:
        try:
            st = stats_from_json(self._call("stop"))
        finally:
            self.sock.close()
            self._reap()
        return st

    def _reap(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sock.fileno() >= 0:
            self.stop()


def stats_from_json(d: dict) -> Stats:
    d["states"] = {int(k): v for k, v in d["states"].items()}
    return Stats(**d)


def rpc_loop(conn: socket.socket, server: FaultServer) -> None:
    """Answer control requests until 'stop' or EOF (runs in the handler process)."""
    rfile = conn.makefile("rb")
    for line in rfile:
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "pause":
                server.pause()
                value = None
            elif op == "resume":
                server.resume()
                value = None
            elif op == "stats":
                value = asdict(server.snapshot())
            elif op == "read_blocked":
                value = server.read_blocked()
            elif op == "install_barrier":
                value = server.install_barrier(req["page"], req["point"])
            elif op == "wait_held":
                server.wait_held(req["token"], req["wait"])
                value = None
            elif op == "release":
                server.release(req["token"])
                value = None
            elif op == "stop":
                value = asdict(server.stop())
                conn.sendall((json.dumps({"value": value}) + "\n").encode())
                return
            else:
                raise ValueError(f"unknown op {op}")
            reply = {"value": value}
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}", "kind": type(e).__name__}
        conn.sendall((json.dumps(reply) + "\n").encode())
    server.stop()


class ProcessHandler(_RemoteHandler):
    """Serve in a forked process.  Start it before registering ranges (see module doc)."""

    topology = "process"

    def __init__(self, uffd: Userfaultfd, base: int, size: int, page_size: int,
                 source: Source | None = None, options: Options | None = None) -> None:
        self.args = (uffd, base, size, page_size, source.addr if source else 0, options)

    def start(self) -> ProcessHandler:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            parent.close()
            code = 0
            try:
                libc.set_pdeathsig()
                server = FaultServer(*self.args)
                server.start()
                rpc_loop(child, server)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid, self.sock = pid, parent
        self._rfile = parent.makefile("rb")
        return self

    def _reap(self) -> None:
        reap(self.pid, 10)


class SpawnedHandler(_RemoteHandler):
    """A separate ``python -m lib.kernel.handler`` process; the uffd travels by SCM_RIGHTS."""

    topology = "scm_rights"

    def __init__(self, uffd: Userfaultfd, base: int, size: int, page_size: int,
                 source: Source | None = None, options: Options | None = None) -> None:
        self.uffd, self.base, self.size, self.page_size = uffd, base, size, page_size
        self.source = source
        self.options = options or Options()

    def start(self) -> SpawnedHandler:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = _REPO_ROOT
        env = dict(os.environ, PYTHONPATH=root)
        self.proc = subprocess.Popen(
            # the running interpreter's own binary: always executable by us, whatever venv
            # symlink sys.executable names (the handler needs only the standard library)
            [os.readlink("/proc/self/exe"), "-m", "lib.kernel.handler", str(child.fileno())],
            pass_fds=[child.fileno()], env=env, cwd=root,
        )
        child.close()
        self.pid, self.sock = self.proc.pid, parent
        self._rfile = parent.makefile("rb")
        boot = {
            "base": self.base, "size": self.size, "page_size": self.page_size,
            "features": self.uffd.features, "source_size": self.source.size if self.source else 0,
            "options": asdict(self.options),
        }
        fds = [self.uffd.fd] + ([self.source.fd] if self.source else [])
        socket.send_fds(parent, [(json.dumps(boot) + "\n").encode()], fds)
        self._call("stats", timeout=30)  # wait until it serves
        return self

    def _reap(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spawned_main(sock_fd: int) -> None:
    """Entry point of a SpawnedHandler process."""
    libc.set_pdeathsig()
    conn = socket.socket(fileno=sock_fd)
    msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, 2)
    boot = json.loads(msg.split(b"\n", 1)[0])
    uffd = Userfaultfd(fds[0])
    uffd.features = boot["features"]
    source = 0
    if boot["source_size"]:
        source = libc.mmap(boot["source_size"], abi.PROT_READ, abi.MAP_SHARED, fds[1])
    server = FaultServer(uffd, boot["base"], boot["size"], boot["page_size"], source, Options(**boot["options"]))
    server.start()
    rpc_loop(conn, server)


TOPOLOGIES = {"thread": ThreadHandler, "process": ProcessHandler, "scm_rights": SpawnedHandler}
