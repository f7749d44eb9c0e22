"""cocotb bench of the board's host link: the engine behind the UART, driven by the host API.

Run by :func:`bitspike.sim.link_runner.run_link`, which builds the Verilog of
:class:`~bitspike.boards.link.LinkedEngine` (the component a board top level puts on its FTDI
UART) and points the bench at a job folder (``$BITSPIKE_LINK_JOB``: the Program's bundle, the
images, ``job.json``). The bench writes ``report.json`` there.

The parts:

:class:`UartModel`
    The host's end of the serial line, bit by bit: a driver that shifts bytes onto ``rx``
    (8N1 at the bench's baud rate; a byte can be sent with a low stop bit, and the board's reset
    can be pulsed after the bytes before it are out) and a monitor that decodes ``tx``.
:class:`SimTransport`
    A :class:`bitspike.boards.host.Transport` over that model: the host API's ``write`` and
    ``read`` cross to the simulator through thread-safe queues.
The scenario
    :class:`~bitspike.boards.host.BoardLink` runs in a thread, as it would against a board: it
    checks the board's INFO against the Program, classifies a batch of images and compares
    every logit, class and cycle count with the golden model and the cycle model; sends each
    malformed frame kind and checks its error reply and a correct inference after it; lets the
    line corrupt one request (the host's retry must recover); and resets the board mid-frame.
    Sim time runs while the host thread waits, so the board's frame timeout is real.
:class:`PtyBridge`
    Or the simulated board on a pseudo-terminal, and a command (``bitspike board run --port
    /dev/pts/N ...``) run against it: the CLI and pyserial end to end, no board needed.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import traceback
from pathlib import Path

import cocotb
import numpy as np
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from bitspike.boards import protocol as proto
from bitspike.boards.host import (
    BoardLink,
    BoardRefused,
    BoardTimeout,
    Transport,
    check_board_matches,
)
from bitspike.boards.protocol import Command, LinkError

__all__ = ["SimTransport", "UartModel"]


class UartModel:
    """The host's end of the UART (module docstring)."""

    def __init__(self, dut, bit_ns: int, clock_ns: int):
        self._dut, self._bit_ns, self._clock_ns = dut, bit_ns, clock_ns
        self.to_board: queue.Queue = queue.Queue()
        self.from_board: queue.Queue = queue.Queue()
        self.stop = False
        self.resets = 0
        self.corrupt_next = 0  # flip a bit in the next write's n-th byte (1-based; 0: none)

    async def _bit(self, value: int) -> None:
        self._dut.rx.value = value
        await Timer(self._bit_ns, unit="ns")

    async def _byte(self, byte: int, stop: int = 1) -> None:
        await self._bit(0)
        for i in range(8):
            await self._bit((byte >> i) & 1)
        await self._bit(stop)
        self._dut.rx.value = 1

    async def drive(self) -> None:
        """Shift out what the host writes; idle-poll once per byte time."""
        self._dut.rx.value = 1
        while not self.stop:
            try:
                kind, data = self.to_board.get_nowait()
            except queue.Empty:
                await Timer(10 * self._bit_ns, unit="ns")
                continue
            if kind == "bytes":
                for byte in data:
                    await self._byte(byte)
            elif kind == "bad_stop":
                await self._byte(data, stop=0)
                await Timer(2 * self._bit_ns, unit="ns")  # the line idles high again
            elif kind == "reset":
                await RisingEdge(self._dut.clk)
                self._dut.rst.value = 1
                for _ in range(data):
                    await RisingEdge(self._dut.clk)
                self._dut.rst.value = 0
                self.resets += 1
            elif kind == "signal":  # the host thread waits for this point of the line
                data.set()

    async def monitor(self) -> None:
        """Decode the board's ``tx`` into ``from_board``, sampling each bit in its middle."""
        while not self.stop:
            await FallingEdge(self._dut.tx)
            await Timer(self._bit_ns // 2, unit="ns")
            if int(self._dut.tx.value):
                continue  # a glitch, not a start bit
            byte = 0
            for i in range(8):
                await Timer(self._bit_ns, unit="ns")
                byte |= int(self._dut.tx.value) << i
            await Timer(self._bit_ns, unit="ns")
            if not int(self._dut.tx.value):
                raise AssertionError("the board sent a byte with a low stop bit")
            self.from_board.put(byte)


class SimTransport(Transport):
    """:class:`~bitspike.boards.host.Transport` over the :class:`UartModel` (thread side)."""

    def __init__(self, uart: UartModel):
        self._uart = uart

    def write(self, data: bytes) -> None:
        data = bytearray(data)
        if self._uart.corrupt_next:  # the line flips one bit of this request
            data[self._uart.corrupt_next - 1] ^= 0x08
            self._uart.corrupt_next = 0
        self._uart.to_board.put(("bytes", bytes(data)))

    def read(self, size: int, timeout: float) -> bytes:
        out = bytearray()
        try:
            out.append(self._uart.from_board.get(timeout=timeout))
            while len(out) < size:
                out.append(self._uart.from_board.get_nowait())
        except queue.Empty:
            pass
        return bytes(out)

    def drain(self) -> None:
        while True:
            try:
                self._uart.from_board.get(timeout=0.05)
            except queue.Empty:
                return

    def write_bad_stop(self, frame: bytes, index: int) -> None:
        """``frame`` with byte ``index`` sent with a low stop bit (a framing error)."""
        self.write(frame[:index])
        self._uart.to_board.put(("bad_stop", frame[index]))
        self.write(frame[index + 1:])

    def press_reset(self, cycles: int = 20) -> None:
        """Pulse the board's reset once the bytes written so far are on the line (waits)."""
        done = threading.Event()
        self._uart.to_board.put(("reset", cycles))
        self._uart.to_board.put(("signal", done))
        if not done.wait(60):
            raise TimeoutError("the bench did not reach the reset")


class _Checks:
    def __init__(self):
        self.results: dict[str, str] = {}
        self.mismatches: list[str] = []

    def ok(self, name: str) -> None:
        self.results[name] = "ok"

    def fail(self, name: str, why: str) -> None:
        self.results[name] = why


def _scenario(link: BoardLink, transport: SimTransport, program, images, expected, job,
              checks: _Checks, report: dict) -> None:
    """The host's side of the bench (module docstring); runs in a thread."""
    from bitspike.boards.link import program_id

    info = link.info()
    check_board_matches(info, program)
    report["info"] = info.to_dict()
    report["program_id"] = f"{program_id(program):08x}"
    checks.ok("info")

    def infer_checked(index: int, where: str) -> None:
        got = link.infer(images[index])
        want = expected[index]
        if (list(got.logits), got.klass, got.cycles) != (want.logits, want.klass, want.cycles):
            checks.mismatches.append(
                f"{where}: image {index}: expected logits {want.logits}, class {want.klass}, "
                f"{want.cycles} cycles; got {list(got.logits)}, class {got.klass}, "
                f"{got.cycles} cycles")
        report["classes"].append(got.klass)
        report["cycles"].append(got.cycles)

    start = time.perf_counter()
    count = job["count"]
    for i in range(count):
        infer_checked(i, "batch")
    report["batch_seconds"] = time.perf_counter() - start
    report["inferences"] = count
    if not job["malformed"]:
        return

    pixels = info.pixels
    good = images[0].reshape(-1).astype(np.uint8).tobytes()
    frame = proto.encode_request(Command.INFER, good)
    bad_crc = bytearray(frame)
    bad_crc[-1] ^= 0xFF
    high = bytearray(good)
    high[pixels // 2] = info.max_level + 1
    cases = {
        LinkError.BAD_CRC: lambda: link.send(bytes(bad_crc)),
        LinkError.BAD_LENGTH: lambda: link.send(proto.encode_request(Command.INFER,
                                                                     good[:-1])),
        LinkError.UNKNOWN_COMMAND: lambda: link.send(proto.encode_request(0x33, b"\x01\x02")),
        LinkError.LEVEL_OUT_OF_RANGE: lambda: link.send(proto.encode_request(Command.INFER,
                                                                             bytes(high))),
        LinkError.TIMEOUT: lambda: link.send(frame[:len(frame) // 2]),
        LinkError.FRAMING: lambda: transport.write_bad_stop(frame, 6),
    }
    for k, (kind, send) in enumerate(cases.items()):
        name = f"malformed {kind.name}"
        send()
        reply = link.read_reply()
        if not reply.is_error or reply.error()[0] is not kind:
            checks.fail(name, f"expected error {kind.name}, got code 0x{reply.code:02X} "
                              f"{reply.payload.hex(' ')}")
            continue
        before = len(checks.mismatches)
        infer_checked(1 + k % (len(images) - 1), f"after {kind.name}")
        if len(checks.mismatches) == before:
            checks.ok(name)
        else:
            checks.fail(name, checks.mismatches[-1])

    # the host's own guard: a level out of range is refused before it is sent
    try:
        link.infer(np.full(pixels, info.max_level + 1))
        checks.fail("host refuses a level out of range", "no error")
    except Exception as error:  # noqa: BLE001 - the message is the check
        if "levels must lie" in str(error):
            checks.ok("host refuses a level out of range")
        else:
            checks.fail("host refuses a level out of range", str(error))
    # the board's refusal comes back as BoardRefused, not a retry loop
    try:
        link.request(Command.INFER, good[:-1])
        checks.fail("board refusal raises", "no error")
    except BoardRefused as error:
        if error.kind is LinkError.BAD_LENGTH:
            checks.ok("board refusal raises")
        else:
            checks.fail("board refusal raises", str(error))

    # a bit flipped on the line: the board answers BAD_CRC and the host sends it again
    retries = link.stats.retries
    transport._uart.corrupt_next = 8
    before = len(checks.mismatches)
    infer_checked(2, "after a corrupted request")
    if link.stats.retries == retries + 1 and len(checks.mismatches) == before:
        checks.ok("retry after a corrupted request")
    else:
        checks.fail("retry after a corrupted request",
                    f"retries {link.stats.retries - retries}, "
                    f"{len(checks.mismatches) - before} mismatches")

    # reset mid-frame: half a frame, the reset, then a whole frame answered correctly
    link.send(frame[:len(frame) // 2])
    transport.press_reset()
    try:
        stray = link.read_reply(timeout=0.2)
        checks.fail("reset mid-frame", f"a reply to the interrupted frame: {stray}")
    except BoardTimeout:  # no reply to the interrupted frame: expected
        before = len(checks.mismatches)
        infer_checked(3, "after a reset mid-frame")
        if len(checks.mismatches) == before:
            checks.ok("reset mid-frame")
        else:
            checks.fail("reset mid-frame", checks.mismatches[-1])


class PtyBridge:
    """The simulated board on a pseudo-terminal: what a program writes to the pty's far end
    goes onto the UART model's line, and what the board sends comes back out, so a real
    serial client (pyserial, ``bitspike board run --port``) talks to the simulation."""

    def __init__(self, uart: UartModel):
        import pty
        import tty

        self._uart = uart
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._to_board, daemon=True),
                         threading.Thread(target=self._to_host, daemon=True)]
        for t in self._threads:
            t.start()

    def _to_board(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                if data:
                    self._uart.to_board.put(("bytes", data))

    def _to_host(self) -> None:
        while not self._stop.is_set():
            try:
                data = bytearray([self._uart.from_board.get(timeout=0.05)])
            except queue.Empty:
                continue
            while not self._uart.from_board.empty():
                data.append(self._uart.from_board.get_nowait())
            os.write(self.master, bytes(data))

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        os.close(self.master)
        os.close(self.slave)


async def _run_command(dut, uart: UartModel, job: dict, folder: Path) -> None:
    """Serve the board on a pty and run ``job["command"]`` (``{port}`` replaced) against it."""
    import subprocess

    bridge = PtyBridge(uart)
    command = [part.replace("{port}", bridge.port) for part in job["command"]]
    outcome: dict = {}

    def client():
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        outcome.update(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    while thread.is_alive():
        await Timer(20 * job["bit_ns"], unit="ns")
    uart.stop = True
    bridge.close()
    (folder / "report.json").write_text(json.dumps({
        **outcome, "port": bridge.port, "command": command,
        "simulated_cycles": get_sim_time("ns") // job["clock_ns"]}, indent=1) + "\n")


@cocotb.test()
async def host_link(dut):
    from bitspike.sim.reference import expected_results
    from bitspike.sw.images import read_bundle

    folder = Path(os.environ["BITSPIKE_LINK_JOB"])
    job = json.loads((folder / "job.json").read_text())
    program = read_bundle(folder / "program")
    images = np.load(folder / "images.npy")
    import torch

    expected = [] if job.get("command") else expected_results(
        program, torch.from_numpy(images), lanes=job["lanes"])
    uart = UartModel(dut, job["bit_ns"], job["clock_ns"])
    dut.rst.value = 1
    dut.rx.value = 1
    for _ in range(5):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    cocotb.start_soon(uart.drive())
    cocotb.start_soon(uart.monitor())
    if job.get("command"):
        await _run_command(dut, uart, job, folder)
        return

    transport = SimTransport(uart)
    link = BoardLink(transport, timeout=job["host_timeout"], retries=2)
    checks = _Checks()
    report: dict = {"classes": [], "cycles": [], "inferences": 0}
    error: list[str] = []

    def host():
        try:
            _scenario(link, transport, program, images, expected, job, checks, report)
        except Exception:  # noqa: BLE001 - reported, the bench fails on it
            error.append(traceback.format_exc())

    start = time.perf_counter()
    thread = threading.Thread(target=host, daemon=True)
    thread.start()
    while thread.is_alive():
        await Timer(20 * job["bit_ns"], unit="ns")
    uart.stop = True
    report.update({
        "checks": checks.results, "mismatches": checks.mismatches,
        "error": error[0] if error else None, "retries": link.stats.retries,
        "bytes_out": link.stats.bytes_out, "bytes_in": link.stats.bytes_in,
        "resets": uart.resets, "sim_seconds": time.perf_counter() - start,
        "simulated_cycles": get_sim_time("ns") // job["clock_ns"]})
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    assert not error, error[0]
    assert not checks.mismatches, checks.mismatches[0]
    failed = {k: v for k, v in checks.results.items() if v != "ok"}
    assert not failed, failed
