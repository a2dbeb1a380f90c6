"""Figures of one screened case (and the training report's nomogram): matplotlib, no pyplot.

Shared by the case report (:mod:`.case_report`), the Slicer panel (a PNG in a label) and the
training report (:mod:`.model_report`). Serving code: needs only matplotlib and numpy (no
scikit-learn), imported lazily by whoever draws.

- :func:`nomogram_figure`: rms-style nomogram (points axis, one axis per predictor, total
  points, linear predictor, risk), with one case's values and points marked when given.
- :func:`waterfall_figure`: SHAP waterfall of one case (log-odds, from the model's base value
  to this case's output, with the decision threshold).
- :func:`colour_bar_png`: the Grad-CAM colour bar, PET-Heat from the display threshold to 1.
- :func:`pet_heat_rgb`: Slicer's PET-Heat colours (the stops of its
  ``vtkMRMLPETProceduralColorNode`` "PET-Heat"; a test compares them with slicer-core's node).
- :func:`render_views_engine`: the slice views drawn without Slicer, with the module's
  conventions (window/level background, PET-Heat heat map over
  ``slicer_glue.mrml.heatmap_window``, values below the threshold transparent, the lesion as an
  outline), for ``radfusion demo`` where slicer-core is not installed.
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: PET-Heat's colour transfer function in Slicer (position on 0-255, r, g, b).
PET_HEAT_STOPS = ((0.0, 0.0, 0.0, 0.0), (35.0, 0.36, 0.0, 0.0), (38.0, 0.5, 0.0, 0.0), (50.0, 0.7, 0.1, 0.0),
                  (70.0, 0.7, 0.5, 0.0), (87.0, 1.0, 1.0, 0.0), (255.0, 1.0, 1.0, 1.0))
OUTLINE_RGB = (0, 255, 102)  # the lesion outline: green reads over grey and heat colours
CASE_COLOUR = "#c0392b"


def figure_png(figure: Any, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def pet_heat_rgb(position: np.ndarray) -> np.ndarray:
    """PET-Heat colour (float RGB in 0-1) of colour-table positions in 0-1."""
    stops = np.asarray(PET_HEAT_STOPS, dtype=float)
    x = np.clip(np.asarray(position, dtype=float), 0.0, 1.0) * 255.0
    return np.stack([np.interp(x, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=-1)


def heat_colours(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return pet_heat_rgb((np.asarray(values, dtype=float) - low) / (high - low))


# ====================================================================== nomogram
def nomogram_figure(nomogram: Any, case: Mapping[str, Any] | None = None) -> Any:
    """An rms-style nomogram; ``case`` (``{"points": {predictor: points}, "values":
    {predictor: value}, "total_points": t, "probability": p}``) marks one case's values,
    points (dashed up to the points axis), total points and risk."""
    from matplotlib.figure import Figure

    rows = _nomogram_rows(nomogram)
    figure = Figure(figsize=(8.5, 0.62 * len(rows) + 0.8))
    axes = figure.subplots()
    for k, (label, positions, tick_labels) in enumerate(rows):
        y = -k
        if len(positions):
            axes.plot([min(positions), max(positions)], [y, y], color="black", lw=1)
        for x, text in zip(positions, _thinned(positions, tick_labels)):
            axes.plot([x, x], [y, y + 0.12], color="black", lw=1)
            if text:
                axes.text(x, y + 0.18, text, ha="center", va="bottom", fontsize=7)
        axes.text(-0.03, y, label, ha="right", va="center", fontsize=9)
    if case:
        _mark_case(axes, nomogram, rows, case)
    axes.set_xlim(-0.32, 1.04)
    axes.set_ylim(-len(rows) + 0.5, 0.8)
    axes.axis("off")
    return figure


def _mark_case(axes: Any, nomogram: Any, rows: list, case: Mapping[str, Any]) -> None:
    maxscale = float(nomogram.maxscale)
    labels = [row[0] for row in rows]
    points, values = case.get("points") or {}, case.get("values") or {}
    for name, p in points.items():
        if name not in labels or p is None:
            continue
        y, x = -labels.index(name), float(p) / maxscale
        axes.plot([x, x], [y, 0], color=CASE_COLOUR, lw=0.8, ls="--")
        axes.plot([x], [y], "o", color=CASE_COLOUR, ms=6)
        value = values.get(name)
        text = f"{value:.2f}" if isinstance(value, (int, float)) else str(value)
        axes.text(x, y - 0.2, f"{text} → {float(p):.0f} pts", color=CASE_COLOUR, ha="center", va="top", fontsize=7.5)
    total, probability = case.get("total_points"), case.get("probability")
    if total is None:
        return
    width = float(np.asarray(nomogram.scales()["total_points"]["values"], dtype=float).max())
    x = min(max(float(total) / width, 0.0), 1.0)
    y_total, y_risk = -labels.index("Total points"), -labels.index("Risk")
    axes.plot([x, x], [y_total, y_risk], color=CASE_COLOUR, lw=0.8, ls="--")
    axes.plot([x], [y_total], "o", color=CASE_COLOUR, ms=6)
    axes.text(x, y_total - 0.2, f"{float(total):.1f}", color=CASE_COLOUR, ha="center", va="top", fontsize=7.5)
    if probability is not None:
        axes.plot([x], [y_risk], "o", color=CASE_COLOUR, ms=6)
        axes.text(x, y_risk - 0.2, f"nomogram {float(probability):.3f}", color=CASE_COLOUR, ha="center", va="top",
                  fontsize=7.5)


def case_marks(result: Any) -> dict[str, Any]:
    """The ``case`` argument of :func:`nomogram_figure` from a ScreenResult."""
    frame = result.nomogram
    return {"points": {str(r.predictor): float(r.points) for r in frame.itertuples()},
            "values": {str(r.predictor): r.value for r in frame.itertuples()},
            "total_points": result.nomogram_total_points, "probability": result.nomogram_probability}


def _thinned(positions: Sequence[float], labels: Sequence[str], char_width: float = 0.0115) -> list[str]:
    """Labels left to right, blanking any that would overlap the last one shown (ticks stay)."""
    result = [""] * len(labels)
    right_edge = -np.inf
    for k in np.argsort(np.asarray(positions, dtype=float), kind="stable"):
        half = len(labels[k]) * char_width / 2
        if positions[k] - half > right_edge + char_width:
            result[k] = labels[k]
            right_edge = positions[k] + half
    return result


def _nomogram_rows(nomogram: Any) -> list[tuple[str, np.ndarray, list[str]]]:
    """(label, x positions in [0, 1], tick labels) per nomogram row, top to bottom."""
    from RadFusionScreenLib.stats import pretty

    maxscale = nomogram.maxscale
    points_ticks = pretty(0.0, maxscale, 10)
    rows = [("Points", points_ticks / maxscale, [f"{t:g}" for t in points_ticks])]
    for axis in nomogram.axes().values():
        labels = [str(t) if axis.categorical else f"{float(t):g}" for t in axis.ticks]
        rows.append((axis.name, np.asarray(axis.points, dtype=float) / maxscale, labels))
    scales = nomogram.scales()
    total = np.asarray(scales["total_points"]["values"], dtype=float)
    width = float(total.max())
    rows.append(("Total points", total / width, [f"{t:g}" for t in total]))
    for key, label in (("linear_predictor", "Linear predictor"), ("probability", "Risk")):
        values = np.asarray(scales[key]["values"], dtype=float)
        positions = np.asarray(scales[key]["total_points"], dtype=float) / width
        inside = (positions >= -1e-9) & (positions <= 1 + 1e-9)
        rows.append((label, positions[inside], [f"{v:g}" for v in values[inside]]))
    return rows


# ====================================================================== SHAP waterfall
def waterfall_figure(explanation: Mapping[str, Any], threshold: float | None = None, top: int = 10) -> Any:
    """SHAP waterfall of one case: from the model's base value (log-odds) through the ``top``
    largest contributions (the rest summed in one bar) to this case's log-odds."""
    from matplotlib.figure import Figure

    contributions = list(explanation["contributions"])
    shown, rest = contributions[:top], contributions[top:]
    steps = [(f"{c['label']} = {c['value']:.3g}", float(c["shap"])) for c in shown]
    if rest:
        steps.append((f"{len(rest)} other features", float(sum(c["shap"] for c in rest))))
    base = float(explanation["base"])
    figure = Figure(figsize=(8.5, 0.36 * (len(steps) + 2) + 1.1))
    axes = figure.subplots()
    position = base
    n = len(steps)
    for k, (label, value) in enumerate(steps):
        y = n - k
        colour = "#c0392b" if value > 0 else "#2e6da4"
        axes.barh(y, value, left=position, color=colour, height=0.62)
        axes.text(position + value + (0.05 if value >= 0 else -0.05), y, f"{value:+.2f}", va="center",
                  ha="left" if value >= 0 else "right", fontsize=7.5)
        position += value
    axes.set_yticks(range(n, 0, -1), labels=[label for label, _ in steps], fontsize=7.5)
    axes.axvline(base, color="grey", lw=0.8, ls=":")
    axes.axvline(position, color="black", lw=1)
    axes.text(base, n + 0.75, f"base {base:.2f} ", ha="right", fontsize=7.5, color="grey")
    axes.text(position, 0.2, f"this case {position:.2f} (p = {1 / (1 + np.exp(-position)):.3f})", ha="center",
              fontsize=7.5)
    if threshold is not None and 0 < threshold < 1:
        cut = float(np.log(threshold / (1 - threshold)))
        axes.axvline(cut, color="#8e44ad", lw=1, ls="--")
        axes.text(cut, n + 0.75, f" threshold {threshold:.3f}", ha="left" if cut >= base else "right", fontsize=7.5,
                  color="#8e44ad")
    axes.set_ylim(-0.3, n + 1.2)
    axes.set_xlabel("fused model output, log-odds (red: towards positive, blue: towards negative)")
    axes.spines[["top", "right"]].set_visible(False)
    return figure


# ====================================================================== colour bar
def colour_bar_png(threshold: float, window: tuple[float, float], width: int = 360, height: int = 18) -> bytes:
    """The Grad-CAM colour bar: PET-Heat from ``threshold`` to 1 (what the views show),
    labelled; below the threshold nothing is drawn."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / 100, (height + 34) / 100))
    axes = figure.add_axes((0.04, 0.5, 0.92, 0.4))
    values = np.linspace(threshold, 1.0, 256)
    axes.imshow(heat_colours(values, window)[None], aspect="auto", extent=(threshold, 1.0, 0, 1))
    axes.set_yticks([])
    ticks = sorted({round(threshold, 2), *[t for t in (0.6, 0.7, 0.8, 0.9, 1.0) if t > threshold + 0.04]})
    axes.set_xticks(ticks, labels=[f"{t:g}" for t in ticks], fontsize=7)
    axes.set_xlabel(f"Grad-CAM (fraction of its maximum); below {threshold:g} transparent", fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ====================================================================== engine-side views
def render_views_engine(image: Any, mask: Any, heatmap: Any | None, *, threshold: float, window: tuple[float, float],
                        grey_window: tuple[float, float], opacity: float = 0.5, height: int = 440,
                        outline_thickness: int = 2, orientations: Iterable[str] = ("Axial", "Coronal", "Sagittal"),
                        ) -> dict[str, np.ndarray]:
    """Slice views through the lesion centre drawn with numpy and pillow, with the module's
    conventions (see the module doc): orientation → RGB ``uint8`` (height × width × 3),
    radiological (patient's left on the image's right, anterior / superior up). A one-slice
    image gives its axial view only. Images are reoriented to LPS first.
    """
    import SimpleITK as sitk

    grids = [sitk.DICOMOrient(x, "LPS") for x in (image, mask) + ((heatmap,) if heatmap is not None else ())]
    arrays = [sitk.GetArrayFromImage(g).astype(float) for g in grids]  # (k: S, j: P, i: L)
    grey, roi = arrays[0], arrays[1] > 0
    heat = arrays[2] if heatmap is not None else None
    spacing = grids[0].GetSpacing()  # (i, j, k)
    if grey.shape[0] == 1:
        orientations = [o for o in orientations if o == "Axial"] or ["Axial"]
    centre = np.rint(np.argwhere(roi).mean(axis=0)).astype(int) if roi.any() else np.array(grey.shape) // 2
    views = {}
    for orientation in orientations:
        planes, aspect = _plane(orientation, centre, spacing, grey, roi, heat)
        views[orientation] = _draw(planes, aspect, height, threshold, window, grey_window, opacity, outline_thickness)
    return views


def _plane(orientation: str, centre: np.ndarray, spacing: Sequence[float], *arrays: np.ndarray | None):
    k, j, i = centre
    si, sj, sk = spacing
    if orientation == "Axial":  # rows anterior → posterior (j), columns right → left (i)
        take, aspect = (lambda a: a[k]), (sj, si)
    elif orientation == "Coronal":  # rows superior → inferior (k reversed), columns right → left
        take, aspect = (lambda a: a[::-1, j, :]), (sk, si)
    elif orientation == "Sagittal":  # rows superior → inferior, columns anterior → posterior (j)
        take, aspect = (lambda a: a[::-1, :, i]), (sk, sj)
    else:
        raise ValueError(f"unknown orientation {orientation!r}")
    return [None if a is None else take(a) for a in arrays], aspect


def _draw(planes: list, aspect: tuple[float, float], height: int, threshold: float, window: tuple[float, float],
          grey_window: tuple[float, float], opacity: float, thickness: int) -> np.ndarray:
    from PIL import Image
    from scipy import ndimage

    grey, roi, heat = planes
    rows, columns = grey.shape
    width = max(1, round(height * (columns * aspect[1]) / (rows * aspect[0])))

    def resized(values: np.ndarray, resample: int) -> np.ndarray:
        picture = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
        return np.asarray(picture.resize((width, height), resample=resample), dtype=float)

    low, high = grey_window
    g = np.clip((resized(grey, Image.BILINEAR) - low) / (high - low), 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=-1)
    if heat is not None:
        h = resized(heat, Image.BILINEAR)
        shown = h >= threshold * max(float(np.nanmax(heat)), 1e-12)
        colours = heat_colours(h / max(float(np.nanmax(heat)), 1e-12), window)
        rgb[shown] = (1 - opacity) * rgb[shown] + opacity * colours[shown]
    label = resized(roi.astype(np.float32), Image.NEAREST) > 0.5
    outline = label & ~ndimage.binary_erosion(label, np.ones((2 * thickness + 1, 2 * thickness + 1)), border_value=1)
    rgb[outline] = np.asarray(OUTLINE_RGB, dtype=float) / 255.0
    return np.rint(rgb * 255).astype(np.uint8)
