"""``bitspike build``: a Program bundle to a bitstream for a board, with its utilisation, Fmax
and inferences per second; ``--program`` loads it into a connected board."""

from __future__ import annotations

import sys
from pathlib import Path

from ..sw.errors import BitspikeError

__all__ = ["add_board_command", "add_build_command", "cmd_board_info", "cmd_board_run",
           "cmd_build"]

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
    if args.baud is not None and args.baud <= 0:
        raise BitspikeError(f"--baud must be a positive integer, not {args.baud}")
    if args.program:
        require_board(board)  # at once, not after a build of minutes
    program = read_bundle(args.bundle)
    host_link = not args.self_test
    lanes = args.lanes if args.lanes is not None else default_lanes(program, board,
                                                                   host_link=host_link)
    out = Path(args.out) if args.out else Path(DEFAULT_OUT) / board.name
    images, _ = sample_images(program, args.images)
    report = build_bitstream(program, board, lanes=lanes, out_dir=out, clock_mhz=args.clock,
                             images=images, progress=True, host_link=host_link,
                             baud=args.baud)
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
                    "to the requested clock, reset button, heartbeat LED, and the UART host "
                    "link on the board's USB serial port, which `bitspike board run` talks "
                    "to; or, with --self-test, a ROM of sample test images streamed through "
                    "the engine forever, each class on LEDs), synthesise, place and route "
                    "and pack it with the YoWASP tools, and print the utilisation, Fmax, "
                    "cycles per image and inferences per second (engine and link). Writes "
                    "the logs, the bitstream, report.json and report.txt to --out. Fails "
                    "when the design does not fit or misses its clock.")
    sp.add_argument("bundle", metavar="PROG_DIR", help="Program bundle folder")
    sp.add_argument("--board", required=True, metavar=names,
                    help=f"target board: {', '.join(board_names())}")
    sp.add_argument("--lanes", type=int, default=None, metavar="P",
                    help="parallel output lanes (default: the most the board budget allows, "
                         "capped at the widest layer's channels)")
    sp.add_argument("--out", default=None, metavar="DIR",
                    help=f"build folder (default: {DEFAULT_OUT}/<board>)")
    sp.add_argument("--clock", type=float, default=None, metavar="MHZ",
                    help="engine clock in MHz, made by the board's PLL (default: 50 on "
                         "ulx3s-85f, 24 on icebreaker)")
    sp.add_argument("--images", type=int, default=8, metavar="N",
                    help="sample test images for the cycle estimate and the self-test ROM "
                         "(default: 8)")
    sp.add_argument("--baud", type=int, default=None, metavar="RATE",
                    help="the host link's UART rate (default: 115200; the boards' FTDI "
                         "chips also run 1000000 and 3000000)")
    sp.add_argument("--self-test", action="store_true",
                    help="build the LED self-test instead of the host link (for a board "
                         "without a host)")
    sp.add_argument("--program", action="store_true",
                    help="load the bitstream into the board on USB after building "
                         "(openFPGALoader)")
    common(sp)
    sp.set_defaults(func=cmd_build)


# ------------------------------------------------------------------------------- bitspike board

def _open_link(args):
    from .host import BoardLink

    if args.timeout <= 0:
        raise BitspikeError(f"--timeout must be positive, not {args.timeout:g}")
    if args.retries < 0:
        raise BitspikeError(f"--retries must be non-negative, not {args.retries}")
    return BoardLink.open(args.port, baud=args.baud, timeout=args.timeout, retries=args.retries)


def cmd_board_info(args) -> int:
    from ..sw.cli import _emit

    with _open_link(args) as link:
        info = link.info()
    d = info.to_dict()
    text = "\n".join(f"  {k:<16} {v}" for k, v in d.items())
    _emit(args, d, f"board on {args.port}:\n{text}")
    return 0


def cmd_board_run(args) -> int:
    from tqdm import tqdm

    from ..sw.cli import _emit
    from ..sw.images import read_bundle
    from .build import sample_images
    from .host import format_run, run_and_compare

    if args.images < 1:
        raise BitspikeError(f"--images must be a positive integer, not {args.images}")
    with _open_link(args) as link:  # a missing port fails at once, before any loading
        program = read_bundle(args.bundle)
        images, source = sample_images(program, args.images)
        labels = None
        if program.meta.get("dataset"):
            from ..sw.evaluate import dataset_for

            labels = dataset_for(program.meta).y_test[:len(images)].numpy()
        bar = tqdm(total=len(images), desc="board run", unit="img", disable=args.json,
                   file=sys.stderr)
        try:
            result = run_and_compare(link, program, images, labels,
                                     progress=lambda n: bar.update(1))
        finally:
            bar.close()
    result["image_source"] = source
    _emit(args, result, format_run(result))
    if result["mismatches"]:
        print(f"bitspike board run: {len(result['mismatches'])} of {result['images']} results "
              "differ from the golden model", file=sys.stderr)
        return 1
    return 0


def add_board_command(sub, common) -> None:
    from .link import DEFAULT_BAUD

    sp = sub.add_parser("board", help="run inferences on a board over its UART host link",
                        description="Talk to a board that runs a bitspike bitstream (bitspike "
                                    "build) over its USB serial port.")
    bsub = sp.add_subparsers(dest="board_command", required=True, metavar="ACTION")

    def link_args(p):
        p.add_argument("--port", required=True,
                       help="the board's serial port (Linux: /dev/ttyUSB0; the iCEBreaker's "
                            "UART is the FTDI's second channel, often /dev/ttyUSB1)")
        p.add_argument("--baud", type=int, default=None, metavar="RATE",
                       help=f"the bitstream's UART rate (default: {DEFAULT_BAUD})")
        p.add_argument("--timeout", type=float, default=2.0, metavar="S",
                       help="seconds to wait for each reply (default: 2); a silent board "
                            "fails after (retries + 1) x this")
        p.add_argument("--retries", type=int, default=2, metavar="N",
                       help="times a request is sent again after a line error (default: 2)")
        common(p)

    info = bsub.add_parser("info", help="print what the board reports",
                           description="Ask the board for its protocol version, Program "
                                       "fingerprint, engine lanes, input size, classes, clock "
                                       "and baud rate, and whether its weights are loaded.")
    link_args(info)
    info.set_defaults(func=cmd_board_info)

    run = bsub.add_parser("run", help="classify test images on the board and check them",
                          description="Check that the board runs PROG (its fingerprint), send "
                                      "the first N test images of the Program's dataset one "
                                      "by one, and compare every class, logit and cycle count "
                                      "with the golden model and the cycle model. Prints the "
                                      "accuracy, the mismatches and the inferences per second "
                                      "over the link; exits 1 when any result differs.")
    run.add_argument("bundle", metavar="PROG_DIR", help="the Program bundle the bitstream was "
                                                        "built from")
    run.add_argument("--images", type=int, default=100, metavar="N",
                     help="test images to classify (default: 100)")
    link_args(run)
    run.set_defaults(func=cmd_board_run)
