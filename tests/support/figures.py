"""Layout checks on rendered matplotlib figures: every piece of text (tick labels, titles, axis labels,
legends, notes) inside the canvas and clear of every other piece of text; legends clear of the data."""

from __future__ import annotations

from itertools import combinations


def _visible(artist) -> bool:
    return artist.get_visible() and (not hasattr(artist, "get_text") or bool(artist.get_text().strip()))


def text_boxes(fig) -> list[tuple[str, object]]:
    """(label, window extent) of every visible text of ``fig`` after a draw; a legend counts as one box."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    out = []
    texts = [t for t in fig.texts if _visible(t)]
    if getattr(fig, "_suptitle", None) is not None and _visible(fig._suptitle):
        texts.append(fig._suptitle)
    for attr in ("_supxlabel", "_supylabel"):
        t = getattr(fig, attr, None)
        if t is not None and _visible(t):
            texts.append(t)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):  # labels of the ticks actually drawn (inside the view)
            drawn = axis._update_ticks()
            texts += [lab for tick in drawn for lab in (tick.label1, tick.label2) if _visible(lab)]
        texts += [
            t
            for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label)
            if _visible(t)
        ]
        texts += [t for t in ax.texts if _visible(t)]
        if ax.get_legend() is not None:
            out.append((f"legend of {ax.get_title()!r}", ax.get_legend().get_window_extent(r)))
    for leg in fig.legends:
        out.append(("figure legend", leg.get_window_extent(r)))
    out += [(repr(t.get_text())[:60], t.get_window_extent(r)) for t in set(texts)]
    return out


def _overlap(a, b, tol: float = 0.5) -> bool:
    return a.x0 + tol < b.x1 and b.x0 + tol < a.x1 and a.y0 + tol < b.y1 and b.y0 + tol < a.y1


def layout_problems(fig) -> list[str]:
    """Overlapping texts, texts outside the canvas, legends over the plotting area of an axes."""
    boxes = text_boxes(fig)
    canvas = fig.bbox
    problems = []
    for label, box in boxes:
        if (
            box.x0 < canvas.x0 - 1
            or box.x1 > canvas.x1 + 1
            or box.y0 < canvas.y0 - 1
            or box.y1 > canvas.y1 + 1
        ):
            problems.append(f"outside the canvas: {label}")
    for (la, a), (lb, b) in combinations(boxes, 2):
        if _overlap(a, b):
            problems.append(f"overlap: {la} / {lb}")
    r = fig.canvas.get_renderer()
    legends = [(f"legend of {ax.get_title()!r}", ax.get_legend()) for ax in fig.axes if ax.get_legend()]
    legends += [("figure legend", leg) for leg in fig.legends]
    for label, leg in legends:
        box = leg.get_window_extent(r)
        for ax in fig.axes:
            if ax.has_data() and _overlap(box, ax.get_window_extent(r), tol=1.0):
                problems.append(f"{label} covers the plotting area of {ax.get_title()!r}")
    return problems
