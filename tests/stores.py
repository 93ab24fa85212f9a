"""Real storage servers for the storage-backend tests, started by the tests themselves.

Azurite (Azure Blob, from tests/player/node_modules), moto's S3 server (in-process) and
Debian's nginx (a plain HTTP origin), plus ``LatencyProxy`` to make any of them slow or
unreachable. Each server can be stopped and started again on the same port with its data
kept, so tests can cover outages. Loaded as a pytest plugin by tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.serving import free_port, stop_process

HOST = "127.0.0.1"
AZURITE_BIN = Path(__file__).parent / "player" / "node_modules" / ".bin" / "azurite-blob"


class _Process:
    """A server subprocess that can be stopped and started again with the same command."""

    def __init__(self, command: list[str], port: int, log: Path, timeout: float) -> None:
        self.command = command
        self.port = port
        self.log = log
        self.timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._handle: IO[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        self._handle = self.log.open("ab")
        self.process = subprocess.Popen(
            self.command, stdout=self._handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_for_port(self.process)
        except BaseException:
            self.stop()
            raise

    def _wait_for_port(self, process: subprocess.Popen[bytes]) -> None:
        """Return once the port accepts connections; raise with the log if it never does."""
        name = Path(self.command[0]).name
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{self.log.read_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not listen on {self.port}:\n{self.log.read_text()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            # A paused (SIGSTOPped) process would never act on SIGTERM.
            process.send_signal(signal.SIGCONT)
            stop_process(process)
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def send_signal(self, signum: int) -> None:
        assert self.process is not None, "not running"
        self.process.send_signal(signum)


class Azurite:
    """Azurite's blob service on a free port, persisting to a temporary folder.

    Data lives on disk (not ``--inMemoryPersistence``) so it survives ``stop()`` + ``start()``;
    Azurite saves its metadata database on SIGTERM.
    """

    account_name = "devstoreaccount1"
    # Azurite's fixed, publicly documented development account key.
    account_key = (
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    )

    def __init__(self, binary: Path = AZURITE_BIN, timeout: float = 30.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="azurite-"))
        self.port = free_port()
        command = [
            str(binary),
            "--blobHost",
            HOST,
            "--blobPort",
            str(self.port),
            "--location",
            str(self.dir / "data"),
            "--disableTelemetry",
            "--skipApiVersionCheck",  # the Python SDK may be newer than this Azurite
            "--loose",
            "--silent",
        ]
        self._process = _Process(command, self.port, self.dir / "azurite.log", timeout)
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return self.connection_string_at(self.blob_endpoint)

    def connection_string_at(self, blob_endpoint: str) -> str:
        """A connection string for this account reached at ``blob_endpoint`` (e.g. a proxy)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={blob_endpoint};"
        )

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._process.stop()

    def pause(self) -> None:
        """Freeze the process: connections are accepted by the kernel but never answered."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MotoS3:
    """moto's S3 server in a thread of this process, on a free port.

    moto keeps its state in process-wide backends, not in the server, so buckets and objects
    survive ``stop()`` + ``start()`` (and are shared with any ``mock_aws`` in the same process).
    """

    key = "testing"
    secret = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        self.port = free_port()
        self._server: Any = None
        self.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def start(self) -> None:
        # Imported here so the rest of the suite runs without moto installed.
        from moto.server import ThreadedMotoServer

        assert self._server is None, "already running"
        self._server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            # moto's stop() only shuts the serve loop down: close the listening socket too,
            # or the port stays taken (and the socket leaks a ResourceWarning).
            server._server.server_close()


class StaticHttp:
    """Debian's nginx serving ``root`` read-only, with byte ranges, ETags and autoindex.

    Everything nginx writes (pid, logs, temp files) goes to a temporary folder, so it runs as
    a regular user too. ``master_process off`` keeps it one process that never changes user.
    """

    def __init__(self, root: Path, binary: str, timeout: float = 10.0) -> None:
        self.root = Path(root).resolve()
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.port = free_port()
        config = self.dir / "nginx.conf"
        config.write_text(self._config(binary))
        # Errors go to stderr, which _Process logs, from the start (-e) and after reading config.
        command = [binary, "-p", str(self.dir), "-e", "stderr", "-c", str(config)]
        self._process = _Process(command, self.port, self.dir / "nginx.log", timeout)
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _config(self, binary: str) -> str:
        d = self.dir
        # Every built-in module creates its temp folder at startup, by default in /var/lib/nginx
        # (not writable by a regular user); the directive of a module left out is unknown.
        built = subprocess.run([binary, "-V"], capture_output=True, text=True).stderr
        temps = "\n".join(
            f"    {name}_temp_path {d / name};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if f"--without-http_{name}_module" not in built
        )
        return f"""\
daemon off;
master_process off;
pid {d / "nginx.pid"};
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {d / "access.log"};
{temps}
    sendfile on;
    etag on;
    server {{
        listen {HOST}:{self.port};
        root {self.root};
        autoindex on;
    }}
}}
"""

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._process.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LatencyProxy:
    """A TCP proxy on a free port to ``host:port``, run by an asyncio loop in a thread.

    Set from any thread, at any time:
    ``delay``: seconds slept before each chunk is passed from the server to the client;
    ``refuse``: when true, new connections are closed at once and open ones are cut.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.delay = 0.0
        self._refuse = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = free_port()
        self._server = self._call(asyncio.start_server(self._handle, HOST, self.port))

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def url_for(self, path: str = "") -> str:
        return f"http://{HOST}:{self.port}{path}"

    @property
    def refuse(self) -> bool:
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        self._refuse = value
        if value:
            self._loop.call_soon_threadsafe(self._cut)

    def _cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        writers = [client]
        self._writers.add(client)
        try:
            if self._refuse:
                client.transport.abort()
                return
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
            writers.append(upstream)
            self._writers.add(upstream)
            await asyncio.gather(
                self._pump(client_reader, upstream, writers, slow=False),
                self._pump(upstream_reader, client, writers, slow=True),
            )
        except OSError:
            pass  # the target is down: the client just sees its connection closed
        except asyncio.CancelledError:
            pass  # close() cancels us; Python 3.11 would log a cancelled handler as an error
        finally:
            for writer in writers:
                self._writers.discard(writer)
                writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sides: list[asyncio.StreamWriter],
        slow: bool,
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if slow and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            # One side failed: cut both, so the other direction's pump ends too.
            for side in sides:
                side.transport.abort()

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            self._cut()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


# tests.conftest is imported inside the functions: it loads this module as a plugin.


def _missing(message: str) -> None:
    from tests.conftest import IN_CI

    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def nginx_binary() -> str:
    """Debian's nginx; it lives in /usr/sbin, which a regular user's PATH often lacks."""
    from tests.conftest import require

    path = f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin"
    return shutil.which("nginx", path=path) or require("nginx", "apt-get install nginx-light")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    from tests.conftest import require

    require("node", "apt-get install nodejs npm")
    if not AZURITE_BIN.exists():
        _missing("Azurite is not installed: run `cd tests/player && npm ci`")
    server = Azurite()
    yield server
    server.close()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def static_http() -> Iterator[Callable[[Path], StaticHttp]]:
    """Factory: ``static_http(root)`` serves ``root`` with nginx until the test ends."""
    binary = nginx_binary()
    servers: list[StaticHttp] = []

    def serve(root: Path) -> StaticHttp:
        servers.append(StaticHttp(root, binary))
        return servers[-1]

    yield serve
    for server in servers:
        server.close()


@pytest.fixture
def latency_proxy() -> Iterator[Callable[[str, int], LatencyProxy]]:
    """Factory: ``latency_proxy(host, port)`` proxies to ``host:port`` until the test ends."""
    proxies: list[LatencyProxy] = []

    def proxy(host: str, port: int) -> LatencyProxy:
        proxies.append(LatencyProxy(host, port))
        return proxies[-1]

    yield proxy
    for proxy_ in proxies:
        proxy_.close()
