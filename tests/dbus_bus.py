"""Real D-Bus parts for tests (DESIGN.md §11): a private system bus and a polkit stand-in.

- :class:`PrivateBus`: ``dbus-daemon --config-file=F --nofork --print-address`` with ``<type>system</type>``,
  a ``unix:path=`` socket in a temporary directory and a permissive default policy (or, with
  ``strict=True``, the default policy of Debian's ``system.conf`` plus the given ``system.d`` files, to
  test a bus policy as the real system bus applies it). Ready when it prints its address.
- :class:`Polkit`: ``org.freedesktop.PolicyKit1`` at ``/org/freedesktop/PolicyKit1/Authority`` answering
  ``CheckAuthorization((sa{sv})sa{ss}us) -> (bba{ss})`` from switches the test sets (``allow``,
  ``challenge``, ``hang``) and recording each call as a :class:`Check`. It runs its own event loop in a
  thread, so a test may block on a client process while polkit keeps answering.
- The fixtures ``system_bus`` (the bus, with ``DBUS_SYSTEM_BUS_ADDRESS`` set for the test and its
  children) and ``polkit`` (the stand-in on it, allowing everything until told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
from dbus_fast import NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method

__all__ = ["Check", "Polkit", "PrivateBus", "StandIn", "polkit", "system_bus"]

START_TIMEOUT = 10.0
_HEAD = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
"""
PERMISSIVE = """  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
"""
# The default policy of Debian's /usr/share/dbus-1/system.conf (dbus 1.14): nobody owns or calls
# anything unless a system.d file punches a hole; polkit's own system.d file is stood in for here.
STRICT = """  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
"""


class PrivateBus:
    """A private system-like bus; use as a context manager or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self, directory: Path, *, strict: bool = False, includes: Iterable[Path] = (),
        servicedirs: Iterable[Path] = (),
    ) -> None:  # fmt: skip
        self.directory = directory
        self.socket = directory / "system_bus_socket"
        self.config = directory / "bus.conf"
        self.log = directory / "dbus-daemon.log"  # a file, not a pipe: a full pipe would block the daemon
        self.strict = strict
        self.includes = list(includes)
        self.servicedirs = list(servicedirs)  # activation files (listed, never started: no launch helper)
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> str:
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            pytest.skip("dbus-daemon is not installed (apt install dbus-daemon)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # the strict-policy tests connect as a throwaway user
        includes = "".join(f"  <include>{path}</include>\n" for path in self.includes)
        includes += "".join(f"  <servicedir>{path}</servicedir>\n" for path in self.servicedirs)
        policy = STRICT if self.strict else PERMISSIVE
        self.config.write_text(_HEAD.format(socket=self.socket) + policy + includes + "</busconfig>\n")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [daemon, f"--config-file={self.config}", "--nofork", "--print-address"],
                stdout=subprocess.PIPE,
                stderr=log,
            )
        line = _read_line(self.process, START_TIMEOUT)
        if not line.startswith("unix:"):
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start: {line!r}; {self.log.read_text(errors='replace')}")
        self.address = line
        return line

    def kill(self) -> None:
        """Kill the daemon abruptly (SIGKILL): every connection drops at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(START_TIMEOUT)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(1)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of *process*, waiting at most *timeout* seconds ("" on EOF or timeout)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in data and time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break
                data += chunk
    return data.decode(errors="replace").partition("\n")[0].strip()


class StandIn:
    """A stand-in service for one we do not own (DESIGN.md §11): *interface* exported at *path* under the
    well-known *name*, served by an event loop of its own in a thread, so that a test may block on a
    client process while the stand-in keeps answering. :meth:`start` returns once the name is owned;
    :meth:`stop` releases it (``NameOwnerChanged``, as when the real service exits)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, address: str, name: str, path: str, interface: ServiceInterface) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def run() -> None:
            self.loop, self.stopped = asyncio.get_running_loop(), asyncio.Event()
            try:
                bus = await MessageBus(bus_address=address).connect()
                bus.export(path, interface)
                reply = await bus.request_name(name, NameFlag.DO_NOT_QUEUE)
                assert reply is RequestNameReply.PRIMARY_OWNER, reply
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            await self.stopped.wait()
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), name=self.what, daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT) or failure:
            raise RuntimeError(f"the {self.what} stand-in did not start: {failure[:1]!r}")

    def call(self, change: Callable[[], None]) -> None:
        """Run *change* on the stand-in's loop (where its interface lives); return once it ran."""
        assert self.loop is not None, f"the {self.what} stand-in is not running"
        done = threading.Event()

        def run() -> None:
            try:
                change()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(START_TIMEOUT), f"the {self.what} stand-in did not run the change"

    def stop(self) -> None:
        if self.loop is not None and self.stopped is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended (the bus died)
                self.loop.call_soon_threadsafe(self.stopped.set)
            self._thread.join(START_TIMEOUT)
            self.loop = None


@dataclass(frozen=True)
class Check:
    """One CheckAuthorization call as the stand-in received it."""

    subject_kind: str
    subject: dict[str, Any]
    action: str
    details: dict[str, str]
    flags: int
    cancellation_id: str


@dataclass
class Polkit:
    """The polkit stand-in; set :attr:`allow`, :attr:`challenge` or :attr:`hang`, read :attr:`checks`."""

    allow: bool = True
    challenge: bool = False  # with allow False: "authentication would help" (is_challenge)
    hang: bool = False  # never answer (until stop); for timeout tests
    checks: list[Check] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # CancelCheckAuthorization ids
    cancellation: threading.Event = field(default_factory=threading.Event, repr=False)  # set on each
    _service: StandIn = field(default_factory=lambda: StandIn("polkit"), init=False, repr=False)

    def start(self, address: str) -> None:
        authority = _Authority(self)
        self._service.start(address, "org.freedesktop.PolicyKit1", "/org/freedesktop/PolicyKit1/Authority", authority)

    def stop(self) -> None:
        self._service.stop()


class _Authority(ServiceInterface):
    def __init__(self, polkit: Polkit) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self._polkit = polkit

    @dbus_method()
    async def CheckAuthorization(
        self,
        subject: Annotated[list[Any], DBusSignature("(sa{sv})")],
        action_id: DBusStr,
        details: Annotated[dict[str, str], DBusSignature("a{ss}")],
        flags: DBusUInt32,
        cancellation_id: DBusStr,
    ) -> Annotated[list[Any], DBusSignature("(bba{ss})")]:
        kind, values = subject
        plain = {key: variant.value for key, variant in values.items()}
        polkit = self._polkit
        polkit.checks.append(Check(kind, plain, action_id, dict(details), flags, cancellation_id))
        if polkit.hang:
            assert polkit._service.stopped is not None
            await polkit._service.stopped.wait()
        return [polkit.allow, polkit.challenge and not polkit.allow, {}]

    @dbus_method()
    def CancelCheckAuthorization(self, cancellation_id: DBusStr):
        self._polkit.cancelled.append(cancellation_id)
        self._polkit.cancellation.set()


@pytest.fixture
def system_bus(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PrivateBus]:
    """A private system bus for one test; ``DBUS_SYSTEM_BUS_ADDRESS`` points at it for the test and the
    processes it starts (``gdbus call --system``, ``dbus-send --system``, ``crashd``)."""
    with PrivateBus(tmp_path_factory.mktemp("bus")) as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        yield bus


@pytest.fixture
def polkit(system_bus: PrivateBus) -> Iterator[Polkit]:
    """The polkit stand-in on ``system_bus``; allows everything until the test says otherwise."""
    stand_in = Polkit()
    stand_in.start(system_bus.address)
    try:
        yield stand_in
    finally:
        stand_in.stop()
