"""The host side of the UART link without a board: the protocol's frames and payloads, the host
API's reads, retries and refusals against a scripted board, and ``bitspike board`` when the port
is missing or the board does not answer.

The host API against the real RTL (bit by bit, in Verilator) is tests/test_link_sim.py.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from bitspike.boards import protocol as proto
from bitspike.boards.host import (
    BoardLink,
    BoardMismatch,
    BoardRefused,
    BoardTimeout,
    HostLinkError,
    Transport,
    check_board_matches,
)
from bitspike.boards.link import program_id
from bitspike.boards.protocol import Command, LinkError, ProtocolError

from .programs import dense_chain
from .test_cli import run_cli


def test_frames_round_trip_and_every_damage_is_named():
    frame = proto.encode_reply(Command.INFER, bytes(range(10)))
    assert frame[0] == proto.REPLY_SYNC and struct.unpack_from("<H", frame, 2) == (10,)
    assert proto.decode_reply(frame) == proto.ReplyFrame(Command.INFER, bytes(range(10)))
    with pytest.raises(ProtocolError, match="bad CRC"):
        proto.decode_reply(frame[:-1] + bytes([frame[-1] ^ 1]))
    with pytest.raises(ProtocolError, match="starts with 0x5A"):
        proto.decode_reply(b"\xa5" + frame[1:])
    with pytest.raises(ProtocolError, match="declares 10 payload bytes"):
        proto.decode_reply(frame[:-3] + frame[-2:])
    with pytest.raises(ProtocolError, match="at least 6 bytes"):
        proto.decode_reply(frame[:4])
    frames, rest = proto.parse_frames(b"\x00\x01" + frame + frame[:7])
    assert frames == [frame] and rest == frame[:7]


def test_payloads_round_trip():
    values = dict(version=1, flags=0b101, program_id=0xDEADBEEF, lanes=8, pixels=64,
                  max_level=16, classes=10, logit_bytes=4, clock_khz=50_000, baud=115200,
                  timeout_us=20_000)
    payload = proto.info_payload(**values)
    assert len(payload) == proto.INFO_LENGTH and payload[:4] == proto.INFO_MAGIC
    info = proto.decode_info(payload)
    assert info.program_id == 0xDEADBEEF and info.weights_ready and info.rate_mode
    assert not info.flash_error and info.to_dict()["clock_mhz"] == 50.0
    with pytest.raises(ProtocolError, match="is this a bitspike bitstream"):
        proto.decode_info(b"XXXX" + payload[4:])
    with pytest.raises(ValueError, match="does not fit 1 bytes"):
        proto.info_payload(**{**values, "lanes": 256})
    logits = (-5, 70000, 0)
    body = struct.pack("<3i", *logits) + struct.pack("<HI", 2, 12345)
    assert proto.decode_infer(body, 3) == proto.InferReply(logits, 2, 12345)
    with pytest.raises(ProtocolError, match="18 payload bytes, not 17"):
        proto.decode_infer(body[:-1], 3)
    error = proto.ReplyFrame(proto.ERROR_CODE, proto.error_payload(LinkError.TIMEOUT, 2))
    assert error.is_error and error.error() == (LinkError.TIMEOUT, 2)


class ScriptedBoard(Transport):
    """Answers each request with the next scripted reply (bytes), recording the requests."""

    def __init__(self, replies):
        self.replies, self.requests, self._out = list(replies), [], b""

    def write(self, data):
        self.requests.append(bytes(data))
        if self.replies:
            self._out += self.replies.pop(0)

    def read(self, size, timeout):
        if not self._out:
            time.sleep(min(timeout, 0.01))
            return b""
        out, self._out = self._out[:size], self._out[size:]
        return out


def _info_reply(program, **over):
    values = dict(version=1, flags=1, program_id=program_id(program), lanes=2,
                  pixels=int(np.prod(program.input.shape)), max_level=program.input.max_level,
                  classes=program.classes, logit_bytes=4, clock_khz=24_000, baud=115200,
                  timeout_us=20_000)
    values.update(over)
    return proto.encode_reply(Command.INFO, proto.info_payload(**values))


def _infer_reply(logits, klass, cycles):
    body = struct.pack(f"<{len(logits)}i", *logits) + struct.pack("<HI", klass, cycles)
    return proto.encode_reply(Command.INFER, body)


def test_host_retries_line_errors_and_skips_noise():
    program = dense_chain(3, 3, 0, 5)
    crc_error = proto.encode_reply(proto.ERROR_CODE, proto.error_payload(LinkError.BAD_CRC, 2))
    good = _infer_reply([1, 9, 3], 1, 500)
    board = ScriptedBoard([_info_reply(program), crc_error, b"\x00\xff" + good])
    link = BoardLink(board, timeout=0.5)
    result = link.infer(np.zeros(program.input.shape, dtype=int))
    assert result == proto.InferReply((1, 9, 3), 1, 500)
    assert link.stats.retries == 1 and board.requests[1] == board.requests[2]
    assert board.requests[1] == proto.encode_request(Command.INFER, bytes(8))


def test_host_retries_a_length_error_for_a_request_it_built_right():
    """A corrupted length ending in the board's timeout comes back as BAD_LENGTH: the host's
    request had the right length, so it is sent again."""
    program = dense_chain(3, 3, 0, 5)
    bad_length = proto.encode_reply(proto.ERROR_CODE,
                                    proto.error_payload(LinkError.BAD_LENGTH, 2))
    board = ScriptedBoard([_info_reply(program), bad_length, _infer_reply([4, 0, 0], 0, 77)])
    link = BoardLink(board, timeout=0.5)
    assert link.infer(np.zeros(8, dtype=int)).cycles == 77 and link.stats.retries == 1


def test_host_raises_a_refusal_at_once():
    program = dense_chain(3, 3, 0, 5)
    refusal = proto.encode_reply(proto.ERROR_CODE,
                                 proto.error_payload(LinkError.LEVEL_OUT_OF_RANGE, 2))
    link = BoardLink(ScriptedBoard([_info_reply(program), refusal]), timeout=0.5)
    with pytest.raises(BoardRefused, match="LEVEL_OUT_OF_RANGE: an input level exceeds"):
        link.infer(np.zeros(program.input.shape, dtype=int))
    assert link.stats.retries == 0


def test_host_checks_levels_and_gives_up_after_its_retries():
    program = dense_chain(3, 3, 0, 5)
    link = BoardLink(ScriptedBoard([_info_reply(program)]), timeout=0.1, retries=1)
    with pytest.raises(HostLinkError, match="takes 8 input levels, not 7"):
        link.infer(np.zeros(7, dtype=int))
    with pytest.raises(HostLinkError, match=r"levels must lie in 0\.\.\d+"):
        link.infer(np.full(8, 99))
    with pytest.raises(HostLinkError, match="must be integers"):
        link.infer(np.zeros(8))
    start = time.perf_counter()
    with pytest.raises(BoardTimeout, match="did not answer within 0.1 s"):
        link.infer(np.zeros(8, dtype=int))
    assert link.stats.requests == 3 and time.perf_counter() - start < 2


def test_board_of_another_program_is_named():
    program = dense_chain(3, 3, 0, 5)
    info = proto.decode_info(_info_reply(program, program_id=1, classes=7)[4:-2])
    with pytest.raises(BoardMismatch, match=r"Program id 00000001, this Program's is [0-9a-f]{8}; "
                                            r"classes 7, this Program's 3\. Build and load"):
        check_board_matches(info, program)
    check_board_matches(proto.decode_info(_info_reply(program)[4:-2]), program)


def test_program_id_is_a_fingerprint():
    a, b = dense_chain(3, 3, 0, 5), dense_chain(3, 3, 0, 6)
    assert program_id(a) == program_id(dense_chain(3, 3, 0, 5)) != program_id(b)


# --------------------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("action", [["run", "PROG", "--images", "3"], ["info"]])
def test_board_cli_fails_at_once_on_a_missing_port(action, tmp_path, capsys):
    start = time.perf_counter()
    argv = [a.replace("PROG", str(tmp_path)) for a in action]
    rc, out, err = run_cli(capsys, "board", argv[0], "--port", "/dev/nonexistent", *argv[1:])
    assert rc == 1 and out == ""
    assert "serial port /dev/nonexistent does not exist: plug the board in" in err
    assert time.perf_counter() - start < 2


def test_board_cli_refuses_bad_link_options(capsys):
    rc, _, err = run_cli(capsys, "board", "info", "--port", "loop://", "--retries", "-1")
    assert rc == 1 and "--retries must be non-negative, not -1" in err
    rc, _, err = run_cli(capsys, "board", "info", "--port", "loop://", "--timeout", "0")
    assert rc == 1 and "--timeout must be positive" in err


def test_board_cli_names_a_board_that_does_not_answer(capsys):
    # pyserial's loop:// echoes the request: no reply frame ever comes
    rc, _, err = run_cli(capsys, "board", "info", "--port", "loop://", "--timeout", "0.2",
                         "--retries", "0")
    assert rc == 1
    assert "the board did not answer within 0.2 s: check that it runs a bitspike bitstream" \
        in err
