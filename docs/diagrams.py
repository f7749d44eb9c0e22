"""Draw docs/img/engine_block_diagram.png (run: .venv/bin/python docs/diagrams.py)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {
    "i_stream": (0.2, 5.4, 1.9, 0.8, "i_stream\npixel levels"),
    "load": (0.2, 3.7, 1.9, 1.0, "Load: 1-bits ->\nevent lists\n(MSB plane first)"),
    "ev": (2.8, 3.3, 2.4, 1.8, "ping-pong event lists\nA / B: per (t, y, x)\nchannels + count\n"
           "+ nonempty bitmap rows"),
    "seq": (2.8, 5.6, 2.4, 1.0, "sequencer FSM\n+ layer table ROM\n(sw/cycles.layer_plan)"),
    "walk": (2.5, 1.4, 1.8, 1.3,
             "walker: priority\nencoder over\n(plane, tap) slots:\n1 event per cycle"),
    "wmem": (5.9, 5.6, 2.2, 1.0, "weight memory\nP-wide rows"),
    "lanes": (5.9, 3.3, 2.2, 1.6, "P accumulate lanes\nLOAD / SHIFT_ADD\n(acc << s) + w\n"
              "no multiplier"),
    "done": (5.9, 1.5, 2.2, 1.0, "handoff buffer\n(P sums + segment)"),
    "params": (8.8, 6.8, 2.4, 0.8, "bias, threshold,\nV0 rows (per group)"),
    "fire": (8.8, 3.9, 2.4, 2.2, "firing stage\nbit-serial: (acc<<pend)+B,\nSA T_out, clip L,\n"
             "pool: sum 4 levels\nrate: IF step, reset by\nsubtraction, SRP mask"),
    "write": (8.8, 1.5, 2.4, 1.2, "append 1-bits / spikes\nto the next layer's lists\n"
              "(pooled position if fused)"),
    "emit": (12.0, 5.1, 1.9, 1.0, "output layer:\nlogits, argmax"),
    "out": (12.0, 3.3, 1.9, 1.2, "o_logits\no_result\no_trace\n(optional)"),
}
ARROWS = [("i_stream", "b", "load", "t"), ("load", "r", "ev", "l"), ("ev", "bl", "walk", "t"),
          ("walk", "r", "lanes", "l"), ("seq", "b", "ev", "t"), ("seq", "r", "wmem", "l"),
          ("wmem", "b", "lanes", "t"), ("lanes", "b", "done", "t"), ("done", "r", "fire", "l"),
          ("params", "b", "fire", "t"), ("fire", "b", "write", "t"), ("write", "b", "ev", "br"),
          ("fire", "r", "emit", "l"), ("emit", "b", "out", "t")]


def center(box, side):
    x, y, w, h, _ = BOXES[box]
    return {"l": (x, y + h / 2), "r": (x + w, y + h / 2), "t": (x + w / 2, y + h),
            "b": (x + w / 2, y), "c": (x + w / 2, y + h / 2), "br": (x + w - 0.2, y),
            "bl": (x + 0.8, y)}[side]


def main(path: Path = Path(__file__).parent / "img" / "engine_block_diagram.png"):
    fig, ax = plt.subplots(figsize=(13, 6.5))
    for x, y, w, h, label in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc="#eef3fb",
                                    ec="#2b4c7e"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)
    for a, sa, b, sb in ARROWS:
        rad = {"write": -0.45}.get(a, 0.0)
        ax.add_patch(FancyArrowPatch(center(a, sa), center(b, sb), arrowstyle="-|>",
                                     mutation_scale=12, color="#444", shrinkA=2, shrinkB=2,
                                     connectionstyle=f"arc3,rad={rad}"))
    ax.set_xlim(0, 14.1)
    ax.set_ylim(0.2, 7.8)
    ax.axis("off")
    ax.set_title("bitspike engine: one layer at a time, P outputs per group, one cycle per "
                 "event; firing overlaps the next group's accumulation", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
