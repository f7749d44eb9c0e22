"""Draw docs/img/engine_block_diagram.png (run: .venv/bin/python docs/diagrams.py).

The engine as hw/engine.py builds it: the top's sequencer, layer table and memories, and the
components it joins with ``wiring.connect``. Coordinates are inches on a 14 x 11 inch figure
saved at 100 dpi (1400 px wide, the width docs/engine.md renders at).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch  # noqa: E402

FONT = 9.5
DESC = "#7a3e9d"  # the layer descriptor bus
# what each box is built from: fill, edge, line style, legend text
KINDS = {
    "bram": ("#d3e4f7", "#2b4c7e", "-", "block RAM (synchronous read)"),
    "spram": ("#fbd9b0", "#a3560f", "-", "block RAM on ECP5, SPRAM on iCE40"),
    "reg": ("#d9efd2", "#3c7a2e", "-", "registers"),
    "lut": ("#fff3b8", "#8a7400", "-", "LUTs (combinational ROM)"),
    "logic": ("#ffffff", "#222222", "-", "logic (a component or the top's FSM)"),
    "group": ("#f6f6f6", "#222222", "-", None),
    "port": ("#ececec", "#666666", "--", "stream / port of the engine"),
}

# name: (x, y, w, h, kind, label); a label's text up to ":" and a line break is its bold
# title; a group's title, or a label that is only a title (ending in ":"), sits at the top
BOXES = {
    # the top (hw/engine.py)
    "seq": (0.2, 9.15, 8.4, 1.25, "logic",
            "sequencer FSM (Engine, hw/engine.py):\n"
            "Boot → ClearInput → Load → LayerStart → ClearOutput → Walk → Drain → LayerEnd"
            " → Result\n"
            "per layer LayerStart … LayerEnd, which swaps the halves A / B (src = ~src)\n"
            "drives start / run, list clears, src / load and ArgmaxOutput's finish"),
    "rom": (9.15, 9.15, 2.45, 1.25, "lut",
            "layer-table ROM:\na handful of layer_plan\nrows, read combinationally"),
    "desc": (12.1, 9.15, 1.75, 1.25, "reg", "desc:\nthe layer's row,\nregistered"),
    "i_stream": (0.2, 7.3, 1.75, 0.85, "port", "i_stream:\npixel levels"),
    "load": (0.2, 4.45, 1.75, 2.05, "logic",
             "input load:\n(Engine, Load)\none append per\n1-bit of each\npixel level"),
    # EventLists (hw/event_lists.py)
    "lists": (2.65, 4.3, 4.75, 4.1, "group",
              "EventLists (hw/event_lists.py):\n"
              "ping-pong halves: the src half is read, the other written"),
    "map_a": (2.8, 6.85, 2.15, 0.62, "bram", "nonempty bitmap\n(ECP5: LUT RAM)"),
    "map_b": (5.1, 6.85, 2.15, 0.62, "bram", "nonempty bitmap\n(ECP5: LUT RAM)"),
    "cnt_a": (2.8, 6.07, 2.15, 0.62, "bram", "list lengths"),
    "cnt_b": (5.1, 6.07, 2.15, 0.62, "bram", "list lengths"),
    "ev_a": (2.8, 5.3, 2.15, 0.62, "spram", "event entries\n(SinglePortRAM)"),
    "ev_b": (5.1, 5.3, 2.15, 0.62, "spram", "event entries\n(SinglePortRAM)"),
    "writer": (2.8, 4.45, 4.45, 0.7, "logic",
               "list writer, 2 stages: read the length and bitmap row,\n"
               "then write the entry, length + 1, row | the list's bit"),
    # the issue side (hw/walker.py)
    "scanner": (8.0, 6.05, 3.2, 2.35, "logic", "ListScanner (hw/walker.py):"),
    "window": (8.15, 7.55, 2.9, 0.4, "reg", "window: 6 bitmap rows"),
    "queue": (8.15, 6.45, 2.9, 0.55, "reg", "queue: 5 entries of\n(t, tap, base, count, flags)"),
    "walker": (8.0, 4.3, 3.2, 1.3, "logic",
               "Walker (hw/walker.py):\none accumulate per event,\nfetch addr = base | k\n"
               "LOAD / SHIFT_ADD / CLEAR"),
    # the accumulate path
    "w_load": (11.8, 7.3, 2.05, 1.1, "port",
               "w_load (iCE40):\nweight rows from\nthe SPI flash"),
    "wmem": (11.8, 4.3, 2.05, 2.3, "spram",
             "weight memory:\n(Engine,\nSinglePortRAM)\nP weights per row\naddr = grp_row\n"
             "+ tap · C_in + event"),
    "lanes": (11.8, 1.3, 2.05, 2.55, "logic",
              "AccumulateLanes\n(hw/lanes.py):\nP × acc =\n(acc << s) + w\nLOAD / SHIFT_ADD\n"
              "/ CLEAR\nno multiplier"),
    "buffer": (9.05, 1.3, 2.15, 1.05, "reg", "segment buffer:\n(Engine) P sums\n+ the segment"),
    "params": (9.05, 2.75, 2.15, 1.1, "bram",
               "bias / threshold / v_init:\n(Engine) one row\nper group"),
    "firing": (3.2, 1.3, 5.25, 2.55, "logic",
               "FiringStage (hw/firing.py):\n"
               "bit-serial: deferred firing by successive approximation, clip\n"
               "rate: integrate-and-fire, reset by subtraction, SRP mask\n"
               "P step units of hw/neuron.py in lockstep\n"
               "fused 2x2 pool: the window's four levels summed\n"
               "each 1-bit or spike: one append to the other half\n"
               "output layer: the logits, to ArgmaxOutput"),
    "argmax": (0.2, 1.3, 2.35, 2.55, "logic",
               "ArgmaxOutput\n(hw/output.py):\nlogits pass through,\nthe largest kept\n"
               "(ties: lowest index)"),
    "o_logits": (0.2, 0.25, 1.1, 0.6, "port", "o_logits"),
    "o_result": (1.45, 0.25, 1.1, 0.6, "port", "o_result"),
    "o_trace": (3.2, 0.25, 2.3, 0.6, "port", "o_trace (trace=True)"),
}
# free text: (x, y, text, options)
TEXTS = [
    (3.875, 7.62, "half A", {"weight": "bold"}),
    (6.175, 7.62, "half B", {"weight": "bold"}),
    (9.6, 7.27, "stages A → B → C → C2 → D,\none list per cycle", {"linespacing": 1.3}),
    (9.6, 6.25, "SCAN_LATENCY = 12 cycles / layer", {}),
]


def at(box, side, f=0.5):
    """The point at fraction ``f`` along a side (l, r: bottom to top; t, b: left to right)."""
    x, y, w, h = BOXES[box][:4]
    return {"l": (x, y + f * h), "r": (x + w, y + f * h), "t": (x + f * w, y + h),
            "b": (x + f * w, y)}[side]


# (points, label, label position, options): the last segment carries the arrow head;
# options: both (heads at both ends), ha / va, color, dashed
ARROWS = [
    ([at("seq", "r"), at("rom", "l")], "layer", (8.875, 9.84), {}),
    ([at("rom", "r"), at("desc", "l")], "row", (11.85, 9.84), {}),
    ([at("i_stream", "b"), at("load", "t")], "", None, {}),
    ([at("load", "r", 0.18), (2.8, at("load", "r", 0.18)[1])], "append", (2.3, 4.9), {}),
    ([(7.4, 6.95), (8.0, 6.95)], "scan", (7.7, 7.02), {"both": True}),
    ([(8.0, 5.5), (7.4, 5.5)], "fetch", (7.7, 5.57), {"both": True}),
    ([at("scanner", "b"), at("walker", "t")], "o_stream → i_stream", (9.7, 5.74),
     {"ha": "left"}),
    ([(11.2, 4.9), (11.8, 4.9)], "op", (11.5, 4.97), {}),
    ([at("w_load", "b"), at("wmem", "t")], "", None, {"dashed": True}),
    ([at("wmem", "b"), at("lanes", "t")], "P weights", (12.93, 4.07), {"ha": "left"}),
    ([(11.8, 1.81), (11.2, 1.81)], "next", (11.5, 1.88), {}),
    ([(9.05, 1.81), (8.45, 1.81)], "i_sums", (8.75, 1.88), {}),
    ([at("params", "l"), (8.45, at("params", "l")[1])], "params", (8.75, 3.38), {}),
    ([at("firing", "t", 0.35), (at("firing", "t", 0.35)[0], 4.45)], "append",
     (5.1, 4.09), {"ha": "left"}),
    ([at("firing", "l", 0.5), at("argmax", "r", 0.5)], "o_logits", (2.875, 2.64), {}),
    ([at("argmax", "b", 0.235), at("o_logits", "t")], "", None, {}),
    ([at("argmax", "b", 0.77), at("o_result", "t")], "", None, {}),
    ([at("firing", "b", 0.22), at("o_trace", "t", 0.5)], "", None, {"dashed": True}),
    # desc, the registered layer row, to every component
    ([at("desc", "b"), (12.975, 8.78), (4.4, 8.78), (4.4, 8.4)], "", None,
     {"color": DESC}),
    ([(9.2, 8.78), (9.2, 8.4)], "", None, {"color": DESC}),
]
DESC_LABEL = (8.4, 8.85, "desc → EventLists (list fields), ListScanner, Walker, FiringStage")
DESC_TAGS = [("walker", 10.85, 5.38), ("firing", 8.1, 3.62)]


def draw_box(ax, x, y, w, h, kind, label):
    """A box of ``kind`` with its label centred, or its title at the top (see BOXES)."""
    fc, ec, ls, _ = KINDS[kind]
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                fc=fc, ec=ec, ls=ls, lw=1.3 if kind in ("logic", "group") else 1))
    title, _, rest = label.partition(":\n") if ":\n" in label else ("", "", label)
    if label.endswith(":"):
        title, rest = label[:-1], ""
    line = FONT * 1.3 / 72  # inches per line
    if kind == "group" or not rest:  # title at the top, the rest under it
        ax.text(x + w / 2, y + h - 0.1, title, ha="center", va="top", fontsize=FONT + 0.5,
                weight="bold")
        if rest:
            ax.text(x + w / 2, y + h - 0.1 - line, rest, ha="center", va="top", fontsize=FONT,
                    linespacing=1.3)
        return
    lines = (title.count("\n") + 1 if title else 0) + rest.count("\n") + 1
    top = y + h / 2 + lines * line / 2
    if title:
        ax.text(x + w / 2, top, title, ha="center", va="top", fontsize=FONT, weight="bold")
        top -= line * (title.count("\n") + 1)
    ax.text(x + w / 2, top, rest, ha="center", va="top", fontsize=FONT, linespacing=1.3)


def draw_arrow(ax, points, label, where, opts):
    color = opts.get("color", "#333333")
    ls = "--" if opts.get("dashed") else "-"
    if len(points) > 2:
        xs, ys = zip(*points[:-1], strict=True)
        ax.add_line(Line2D(xs, ys, color=color, lw=1.3, ls=ls))
    style = "<|-|>" if opts.get("both") else "-|>"
    ax.add_patch(FancyArrowPatch(points[-2], points[-1], arrowstyle=style, mutation_scale=13,
                                 color=color, lw=1.3, ls=ls, shrinkA=0, shrinkB=0))
    if label:
        ax.text(*where, label, ha=opts.get("ha", "center"), va=opts.get("va", "bottom"),
                fontsize=FONT, color=color, style="italic")


def main(path: Path = Path(__file__).parent / "img" / "engine_block_diagram.png"):
    fig = plt.figure(figsize=(14, 11))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 14)
    ax.set_ylim(0, 11)
    ax.axis("off")
    for x, y, w, h, kind, label in BOXES.values():
        draw_box(ax, x, y, w, h, kind, label)
    for x, y, text, opts in TEXTS:
        ax.text(x, y, text, ha="center", va="center", fontsize=FONT, **opts)
    for points, label, where, opts in ARROWS:
        draw_arrow(ax, points, label, where, opts)
    x, y, text = DESC_LABEL
    ax.text(x, y, text, ha="center", va="bottom", fontsize=FONT, color=DESC, style="italic")
    for _, tx, ty in DESC_TAGS:
        ax.text(tx, ty, "desc", ha="center", va="center", fontsize=FONT, color=DESC,
                style="italic", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": DESC})
    handles = [Patch(fc=fc, ec=ec, ls=ls, label=text) for fc, ec, ls, text in KINDS.values()
               if text]
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(13.85 / 14, 0.2 / 11),
              ncol=2, fontsize=FONT, frameon=True, title="what a box is built from",
              title_fontsize=FONT)
    ax.text(7, 10.78, "bitspike engine: components joined by wiring.connect (hw/engine.py)",
            ha="center", va="center", fontsize=14, weight="bold")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
