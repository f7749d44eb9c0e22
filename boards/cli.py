"""``bitspike build``: a Program bundle to a bitstream for a board, with its utilisation, Fmax
and inferences per second; ``--program`` loads it into a connected board."""

from __future__ import annotations

import sys
from pathlib import Path

from ..sw.errors import BitspikeError

__all__ = ["add_build_command", "cmd_build"]

DEFAULT_OUT = "build/board"


def cmd_build(args) -> int:
    from ..sw.cli import _emit
    from ..sw.images import read_bundle
    from .build import (
        build_bitstream,
        default_lanes,
        program_board,
        require_board,
        sample_images,
    )
    from .targets import get_board

    board = get_board(args.board)
    if args.lanes is not None and args.lanes < 1:
        raise BitspikeError(f"--lanes must be a positive integer, not {args.lanes}")
    if args.clock is not None and not args.clock > 0:
        raise BitspikeError(f"--clock must be a positive number of MHz, not {args.clock:g}")
    if args.images < 1:
        raise BitspikeError(f"--images must be a positive integer, not {args.images}")
    if args.program:
        require_board(board)  # at once, not after a build of minutes
    program = read_bundle(args.bundle)
    lanes = args.lanes if args.lanes is not None else default_lanes(program, board)
    out = Path(args.out) if args.out else Path(DEFAULT_OUT) / board.name
    images, _ = sample_images(program, args.images)
    report = build_bitstream(program, board, lanes=lanes, out_dir=out, clock_mhz=args.clock,
                             images=images, progress=True)
    result = report.to_dict()
    text = report.format() + f"\nreport: {out / 'report.txt'} and {out / 'report.json'}"
    if args.program:
        print(f"programming the {board.title} ...", file=sys.stderr, flush=True)
        program_board(board, report.bitstream, flash_image=report.flash_image)
        result["programmed"] = True
        text += f"\nprogrammed the {board.title}"
    _emit(args, result, text)
    return 0


def add_build_command(sub, common) -> None:
    from .targets import board_names

    names = "|".join(board_names())
    sp = sub.add_parser(
        "build", help="build a bitstream for a board (ULX3S, iCEBreaker)",
        description="Size the engine for the Program with P lanes, wrap it for the board (PLL "
                    "to the requested clock, reset button, heartbeat LED, and a self-test "
                    "that streams sample test images through the engine forever, showing "
                    "each class on LEDs and lighting a LED when it equals the golden model's "
                    "class), synthesise, place and route and pack it with the YoWASP tools, "
                    "and print the utilisation, Fmax, cycles per image and inferences per "
                    "second. Writes the logs, the bitstream, report.json and report.txt to "
                    "--out. Fails when the design does not fit or misses its clock.")
    sp.add_argument("bundle", metavar="PROG_DIR", help="Program bundle folder")
    sp.add_argument("--board", required=True, metavar=names,
                    help=f"target board: {', '.join(board_names())}")
    sp.add_argument("--lanes", type=int, default=None, metavar="P",
                    help="parallel output lanes (default: per board, 8 on ulx3s-85f, 2 on "
                         "icebreaker)")
    sp.add_argument("--out", default=None, metavar="DIR",
                    help=f"build folder (default: {DEFAULT_OUT}/<board>)")
    sp.add_argument("--clock", type=float, default=None, metavar="MHZ",
                    help="engine clock in MHz, made by the board's PLL (default: 50 on "
                         "ulx3s-85f, 24 on icebreaker)")
    sp.add_argument("--images", type=int, default=8, metavar="N",
                    help="sample test images in the self-test ROM (default: 8)")
    sp.add_argument("--program", action="store_true",
                    help="load the bitstream into the board on USB after building "
                         "(openFPGALoader)")
    common(sp)
    sp.set_defaults(func=cmd_build)
