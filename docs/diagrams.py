"""Draw docs/img/engine_block_diagram.png (run: .venv/bin/python docs/diagrams.py)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {
    "i_stream": (0.2, 5.2, 1.8, 0.8, "i_stream\npixel levels"),
    "load": (0.2, 3.6, 1.8, 1.0, "Load: 1-bits ->\nevent lists\n(MSB plane first)"),
    "ev": (2.8, 3.3, 2.2, 1.6,
           "ping-pong event lists\nA / B: per plane t,\nactive indices + count"),
    "seq": (2.8, 5.4, 2.2, 1.0, "sequencer FSM\n+ layer table ROM"),
    "wmem": (5.8, 5.4, 2.2, 1.0, "weight memory\nP-wide rows"),
    "bmem": (5.8, 6.7, 2.2, 0.7, "bias rows -> lanes\nthreshold rows -> fire"),
    "lanes": (5.8, 3.3, 2.2, 1.6,
              "P accumulate lanes\nCLEAR / SHIFT / ADD /\nADD_BIAS (no multiplier)"),
    "fire": (8.8, 4.4, 2.2, 1.0, "deferred SA fire\nT_out cycles, clip L"),
    "write": (8.8, 2.9, 2.2, 1.0, "write 1-bits as\nevents (next layer)"),
    "emit": (8.8, 5.9, 2.2, 1.0, "output layer:\nlogits + argmax"),
    "out": (11.6, 5.9, 1.9, 1.0, "o_logits\no_result\n(class, cycles)"),
}
ARROWS = [("i_stream", "b", "load", "t"), ("load", "r", "ev", "l"), ("ev", "r", "lanes", "l"),
          ("seq", "b", "ev", "t"), ("seq", "r", "wmem", "l"), ("wmem", "b", "lanes", "t"),
          ("bmem", "r", "fire", "t"), ("lanes", "r", "fire", "l"), ("fire", "b", "write", "t"),
          ("write", "b", "ev", "b"), ("lanes", "t", "emit", "l"), ("emit", "r", "out", "l")]


def center(box, side):
    x, y, w, h, _ = BOXES[box]
    return {"l": (x, y + h / 2), "r": (x + w, y + h / 2), "t": (x + w / 2, y + h),
            "b": (x + w / 2, y), "c": (x + w / 2, y + h / 2)}[side]


def main(path: Path = Path(__file__).parent / "img" / "engine_block_diagram.png"):
    fig, ax = plt.subplots(figsize=(12, 6))
    for x, y, w, h, label in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc="#eef3fb",
                                    ec="#2b4c7e"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)
    for a, sa, b, sb in ARROWS:
        rad = {"write": -0.35, "bmem": -0.25}.get(a, 0.0)
        ax.add_patch(FancyArrowPatch(center(a, sa), center(b, sb), arrowstyle="-|>",
                                     mutation_scale=12, color="#444", shrinkA=2, shrinkB=2,
                                     connectionstyle=f"arc3,rad={rad}"))
    ax.set_xlim(0, 13.7)
    ax.set_ylim(1.6, 7.6)
    ax.axis("off")
    ax.set_title("bitspike engine (bit-serial, dense layers): one layer at a time, "
                 "P outputs per group, events only", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
