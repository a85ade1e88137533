"""Geometry of one synthetic driving scene: which object instance covers each pixel.

The layout mimics a forward-looking vehicle camera (oblique view): sky above a
jittered horizon, buildings / trees / walls / fences along it, a road trapezoid
converging to a vanishing point with dashed lane markings, sidewalks and grass
at the sides, then vehicles, people, poles, signs and traffic lights placed on
the ground with perspective scaling, far to near (painter's order). Cast
shadows go into a separate map because they change the illumination, not the
label.

Instances carry a *role* (what it is semantically, e.g. ``car``), a *part*
(``body``/``glass``/``wheel``: HSI-Drive labels car windows as glass, the
others as the vehicle) and a material *kind* (see :mod:`study.data.synthetic.materials`).
Mapping roles to a dataset's classes happens in :mod:`study.data.synthetic.labels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Every semantic role a scene can contain.
ROLES: tuple[str, ...] = (
    "sky", "building", "wall", "fence", "tree", "grass", "soil", "road", "marking", "sidewalk",
    "car", "truck", "bus", "train", "motorcycle", "bicycle", "person", "rider",
    "pole", "sign", "traffic_light", "guardrail", "water", "ego", "clutter",
)


@dataclass
class Scene:
    """Output of :func:`layout`.

    ``inst`` (H, W) int32 indexes the per-instance lists; ``shadow`` (H, W) in
    [0, 1] scales direct sunlight (0 = cast shadow); ``unlabelled`` (H, W) bool
    marks blobs an annotator left unlabelled; ``horizon`` is the horizon row.
    """

    inst: np.ndarray
    shadow: np.ndarray
    unlabelled: np.ndarray
    roles: list[str]
    parts: list[str]
    kinds: list[str]
    vertical: list[bool]
    sun: list[float]
    horizon: int


class _Canvas:
    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = h, w, rng
        yy, xx = np.mgrid[0:h, 0:w]
        self.yy, self.xx = yy + 0.5, xx + 0.5
        self.inst = np.zeros((h, w), np.int32)
        self.shadow = np.ones((h, w), np.float32)
        self.roles: list[str] = []
        self.parts: list[str] = []
        self.kinds: list[str] = []
        self.vertical: list[bool] = []
        self.sun: list[float] = []

    def add(self, mask: np.ndarray, role: str, kind: str, part: str = "body", vertical: bool = True,
            sun: float | None = None, shade: float = 1.0) -> int:
        """Paint a new instance over ``mask``; it replaces the cast shadow there by ``shade``."""
        idx = len(self.roles)
        lit = self.rng.random() < 0.7
        self.roles.append(role)
        self.parts.append(part)
        self.kinds.append(kind)
        self.vertical.append(vertical)
        self.sun.append(float(sun if sun is not None else (self.rng.uniform(0.3, 1.0) if lit else 0.0)))
        self.inst[mask] = idx
        self.shadow[mask] = shade  # ground is drawn before any shadow is cast, objects bring their own
        return idx

    def rect(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((self.yy - cy) / max(ry, 0.5)) ** 2 + ((self.xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


class _Road:
    """Road trapezoid, sidewalks and perspective scale (pixels per metre) by image row."""

    def __init__(self, c: _Canvas) -> None:
        r, h, w = c.rng, c.h, c.w
        self.hz = int(h * r.uniform(0.36, 0.52))
        self.vx = w * r.uniform(0.35, 0.65)
        depth = h - self.hz
        self.left_slope = (w * r.uniform(-0.35, 0.15) - self.vx) / depth
        self.right_slope = (w * r.uniform(0.85, 1.35) - self.vx) / depth
        self.walk = (r.uniform(0.15, 0.6), r.uniform(0.15, 0.6))  # sidewalk width / road half-width
        # pixels per metre grow linearly with the distance below the horizon; the bottom row's road is ≈ 8 m
        self.ppm = (self.right_slope - self.left_slope) / 8.0

    def dy(self, y: np.ndarray | float) -> np.ndarray | float:
        return np.maximum(np.asarray(y, float) - self.hz, 0.0)

    def left(self, y: np.ndarray | float) -> np.ndarray | float:
        return self.vx + self.left_slope * self.dy(y)

    def right(self, y: np.ndarray | float) -> np.ndarray | float:
        return self.vx + self.right_slope * self.dy(y)

    def scale(self, y: float) -> float:
        """Pixels per metre at ground row ``y`` (perspective: proportional to the distance below the horizon)."""
        return float(self.ppm * self.dy(y))


def _ground(c: _Canvas, road: _Road) -> None:
    r = c.rng
    below = c.yy >= road.hz
    xl, xr = road.left(c.yy), road.right(c.yy)
    half = (xr - xl) / 2.0
    for side, sign in ((0, -1.0), (1, 1.0)):
        kind = ("grass", "grass", "soil", "sidewalk")[r.integers(4)]  # beyond the sidewalk (role = kind)
        outer = below & ((c.xx < xl) if sign < 0 else (c.xx >= xr))
        c.add(outer, kind, kind, vertical=False, sun=1.0)
        edge = xl if sign < 0 else xr
        walk = below & (np.abs(c.xx - edge) < road.walk[side] * half) & outer
        c.add(walk, "sidewalk", "sidewalk", vertical=False, sun=1.0)
    c.add(below & (c.xx >= xl) & (c.xx < xr), "road", "road", vertical=False, sun=1.0)
    if r.random() < 0.5:  # repaired asphalt patches: still road, different spectrum
        for _ in range(r.integers(1, 4)):
            y = r.uniform(road.hz + 2, c.h)
            s = road.scale(y)
            x = r.uniform(road.left(y), road.right(y))
            c.add(c.ellipse(y, x, r.uniform(0.5, 1.5) * s, r.uniform(1, 4) * s) & _is(c, "road"), "road", "patch",
                  vertical=False, sun=1.0)
    if r.random() < 0.25:  # puddle: HSI-Drive labels water separately (then ignored)
        y = r.uniform(road.hz + 0.3 * (c.h - road.hz), c.h)
        s = road.scale(y)
        c.add(c.ellipse(y, r.uniform(road.left(y), road.right(y)), r.uniform(0.3, 0.8) * s, r.uniform(1, 3) * s)
              & _is(c, "road"), "water", "water", vertical=False, sun=1.0)
    _markings(c, road)


def _is(c: _Canvas, *roles: str) -> np.ndarray:
    ids = [i for i, role in enumerate(c.roles) if role in roles]
    return np.isin(c.inst, ids)


def _markings(c: _Canvas, road: _Road) -> None:
    r = c.rng
    on_road = _is(c, "road")
    dy = road.dy(c.yy)
    width = np.maximum(0.13 * road.ppm * dy, 0.55)
    xl, xr = road.left(c.yy), road.right(c.yy)
    depth = 1.0 / (dy + 0.5)
    kind = "marking"
    for frac in r.choice([0.33, 0.5, 0.67], size=r.integers(1, 3), replace=False):
        centre = xl + frac * (xr - xl)
        dashes = ((depth * c.h * r.uniform(0.6, 1.2) + r.random()) % 1.0) < r.uniform(0.35, 0.6)
        c.add(on_road & (np.abs(c.xx - centre) < width / 2) & dashes, "marking", kind, vertical=False, sun=1.0)
    if r.random() < 0.5:
        for edge, inset in ((xl, 1.0), (xr, -1.0)):
            line = np.abs(c.xx - (edge + inset * 0.04 * (xr - xl))) < width / 2
            c.add(on_road & line, "marking", kind, vertical=False, sun=1.0)
    if r.random() < 0.15:  # zebra crossing
        y0 = r.uniform(road.hz + 0.4 * (c.h - road.hz), c.h - 3)
        band = (c.yy >= y0) & (c.yy < y0 + 0.15 * (c.h - road.hz))
        stripes = (((c.xx - road.vx) / np.maximum(0.5 * road.ppm * dy, 1.0)) % 1.0) < 0.5
        c.add(on_road & band & stripes, "marking", kind, vertical=False, sun=1.0)


def _skyline(c: _Canvas, road: _Road) -> None:
    r = c.rng
    x = 0.0
    while x < c.w:
        seg = c.w * r.uniform(0.06, 0.28)
        x0, x1 = x, x + seg
        x = x1
        kind = r.choice(["building", "tree", "wall", "fence", "gap"], p=[0.5, 0.3, 0.08, 0.07, 0.05])
        foot = road.hz + (r.uniform(0, 0.05) * c.h if (x1 < road.vx - 4 or x0 > road.vx + 4) else 0.0)
        if kind == "building":
            top = road.hz - c.h * r.uniform(0.08, 0.42)
            c.add(c.rect(top, foot, x0, x1), "building", "facade")
            if r.random() < 0.4:
                c.add(c.rect(top, top + r.uniform(1, 3), x0, x1), "building", "roof")
            _windows(c, top, foot, x0, x1)
        elif kind == "tree":
            _tree(c, foot, (x0 + x1) / 2, seg / 2, road.hz - c.h * r.uniform(0.1, 0.35))
        elif kind == "wall":
            c.add(c.rect(road.hz - c.h * r.uniform(0.03, 0.1), foot, x0, x1), "wall", "facade")
        elif kind == "fence":
            period = r.uniform(1.5, 4.0)
            bars = ((c.xx / period) % 1.0 < r.uniform(0.3, 0.7)) | (c.yy < road.hz - c.h * 0.07 + 1)
            c.add(c.rect(road.hz - c.h * r.uniform(0.04, 0.1), foot, x0, x1) & bars, "fence", "fence")


def _windows(c: _Canvas, top: float, foot: float, x0: float, x1: float) -> None:
    r = c.rng
    step_y, step_x = r.uniform(2.5, 6.0), r.uniform(3.0, 7.0)
    fill = r.uniform(0.35, 0.7)
    inside = c.rect(top + 2, foot - 2, x0 + 1, x1 - 1)
    grid = (((c.yy - top) / step_y) % 1.0 < fill) & (((c.xx - x0) / step_x) % 1.0 < fill)
    if r.random() < 0.85:
        c.add(inside & grid, "building", "window", part="glass")


def _tree(c: _Canvas, foot: float, cx: float, rx: float, top: float) -> None:
    r = c.rng
    trunk_w = max(1.0, rx * 0.15)
    c.add(c.rect(top + 0.5 * (foot - top), foot, cx - trunk_w / 2, cx + trunk_w / 2), "tree", "bark")
    crown = np.zeros_like(c.inst, dtype=bool)
    for _ in range(r.integers(2, 5)):
        ry = (foot - top) * r.uniform(0.25, 0.45)
        crown |= c.ellipse(r.uniform(top + ry * 0.8, top + ry * 1.6), cx + r.uniform(-0.6, 0.6) * rx, ry,
                           rx * r.uniform(0.5, 1.0))
    c.add(crown, "tree", "tree", vertical=False, sun=float(r.uniform(0.2, 1.0)))


def _cast_shadow(c: _Canvas, road: _Road, y: float, x0: float, x1: float, height: float, side: float,
                 length: float) -> None:
    ground = _is(c, "road", "sidewalk", "grass", "soil", "marking", "water")
    depth = max(1.0, 0.25 * height * length)
    mask = (c.yy >= y - depth) & (c.yy < y + 0.5) & (c.xx >= x0 + side * length * 0.3 * height) & (
        c.xx < x1 + side * length * 0.6 * height)
    c.shadow[mask & ground] = 0.0


def _vehicle(c: _Canvas, road: _Road, role: str, y: float, x: float, sun_side: float, sun_len: float) -> None:
    r = c.rng
    s = road.scale(y)
    size = {"car": (1.8, 1.5), "truck": (2.5, 3.4), "bus": (2.6, 3.2), "train": (12.0, 3.6),
            "motorcycle": (0.8, 1.2), "bicycle": (0.6, 1.0)}[role]
    w, h = size[0] * s * r.uniform(0.9, 1.15), size[1] * s * r.uniform(0.9, 1.1)
    if role in ("bus", "truck") and r.random() < 0.5:
        w *= r.uniform(2.0, 4.0)  # seen from the side
    w = min(w, 0.6 * c.w)  # nothing wider than most of the frame: keeps near objects plausible
    x0, x1, y0 = x - w / 2, x + w / 2, y - h
    shade = float(c.shadow[min(int(y), c.h - 1), int(np.clip(x, 0, c.w - 1))])
    _cast_shadow(c, road, y, x0, x1, h, sun_side, sun_len)
    if role in ("motorcycle", "bicycle"):
        body = "painted" if role == "motorcycle" else "metal"
        c.add(c.rect(y - 0.55 * h, y - 0.2 * h, x0, x1), role, body, shade=shade)
        for wx in (x0 + 0.2 * w, x1 - 0.2 * w):
            c.add(c.ellipse(y - 0.2 * h, wx, 0.2 * h, 0.2 * w + 0.3), role, "rubber", part="wheel", shade=shade)
        if r.random() < (0.9 if role == "motorcycle" else 0.6):
            _person(c, y - 0.45 * h, x, "rider", shade, scale=s)
        return
    body = "metal" if role == "train" and r.random() < 0.5 else ("car_body" if role != "train" else "painted")
    c.add(c.rect(y0, y - 0.12 * h, x0, x1), role, body, shade=shade)
    glass_hi = y0 + 0.1 * h
    glass_lo = y0 + (0.4 if role == "car" else 0.35) * h
    inset = 0.12 * w if role == "car" else 0.05 * w
    if role in ("bus", "train") or w > 3 * h:
        c.add(c.rect(glass_hi, glass_lo, x0 + inset, x1 - inset) & (((c.xx - x0) / max(1.0, 1.2 * s)) % 1.0 < 0.8),
              role, "car_glass", part="glass", shade=shade)
    else:
        c.add(c.rect(glass_hi, glass_lo, x0 + inset, x1 - inset), role, "car_glass", part="glass", shade=shade)
    ww = max(1.0, 0.18 * w if role != "train" else 0.05 * w)
    for wx0 in (x0 + 0.03 * w, x1 - 0.03 * w - ww):
        c.add(c.rect(y - 0.2 * h, y + 0.5, wx0, wx0 + ww), role, "rubber", part="wheel", shade=shade)
    if r.random() < 0.35 and role == "car":
        c.add(c.ellipse(r.uniform(y0 + 0.45 * h, y - 0.2 * h), r.uniform(x0, x1), 0.6, r.uniform(0.6, 2.0)),
              role, "glint", shade=1.0)


def _person(c: _Canvas, y: float, x: float, role: str, shade: float, scale: float) -> None:
    r = c.rng
    h = 1.75 * scale * r.uniform(0.85, 1.1)
    w = max(1.0, 0.45 * scale)
    c.add(c.rect(y - 0.5 * h, y + 0.5, x - w / 3, x + w / 3), role, "cloth", shade=shade)  # legs
    c.add(c.ellipse(y - 0.65 * h, x, 0.2 * h, w / 2 + 0.2), role, "cloth", shade=shade)  # torso
    c.add(c.ellipse(y - 0.9 * h, x, 0.08 * h + 0.3, w / 4 + 0.3), role, "skin", shade=shade)  # head


def _pole(c: _Canvas, road: _Road, y: float, x: float) -> None:
    r = c.rng
    s = road.scale(y)
    h = r.uniform(3.0, 7.0) * s
    pw = max(0.8, 0.15 * s)
    shade = float(c.shadow[min(int(y), c.h - 1), int(np.clip(x, 0, c.w - 1))])
    kind = "metal" if r.random() < 0.6 else "painted"
    c.add(c.rect(y - h, y + 0.5, x - pw / 2, x + pw / 2), "pole", kind, shade=shade)
    top = y - h
    u = r.random()
    if u < 0.45:
        sw = max(1.5, r.uniform(0.5, 0.9) * s)
        shape = c.ellipse(top + sw / 2, x, sw / 2, sw / 2) if r.random() < 0.5 else c.rect(top, top + sw, x - sw / 2,
                                                                                           x + sw / 2)
        c.add(shape, "sign", "painted", shade=shade)
    elif u < 0.7:
        bw, bh = max(1.2, 0.35 * s), max(2.5, 1.0 * s)
        c.add(c.rect(top, top + bh, x - bw / 2, x + bw / 2), "traffic_light", "painted", shade=shade)
        lamp_y = top + bh * r.choice([0.2, 0.5, 0.8])
        c.add(c.ellipse(lamp_y, x, max(0.5, bw * 0.3), max(0.5, bw * 0.3)), "traffic_light", "lamp", shade=shade)


def layout(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Draw one random driving scene of ``height`` × ``width`` pixels."""
    c = _Canvas(height, width, rng)
    c.add(np.ones((height, width), bool), "sky", "sky", sun=0.0)
    road = _Road(c)
    _ground(c, road)
    _skyline(c, road)
    below = c.yy >= road.hz
    ground_ids = _is(c, "road", "sidewalk", "grass", "soil", "marking", "water")
    if rng.random() < 0.5:  # one side of the street lies in a building's shadow
        line = road.vx + rng.uniform(-0.2, 0.2) * width + rng.uniform(-1.5, 1.5) * (c.yy - road.hz)
        side = (c.xx < line) if rng.random() < 0.5 else (c.xx >= line)
        c.shadow[below & side & ground_ids] = 0.0
    if rng.random() < 0.3:  # dappled shade of trees outside the frame
        for _ in range(rng.integers(2, 6)):
            y = rng.uniform(road.hz, height)
            blob = c.ellipse(y, rng.uniform(0, width), rng.uniform(1, 3) * max(road.scale(y), 1.0),
                             rng.uniform(2, 6) * max(road.scale(y), 1.0))
            c.shadow[blob & ground_ids] = rng.uniform(0.0, 0.4)
    if rng.random() < 0.3:  # guard rail (≈0.8 m high) standing on one road edge
        slope = road.left_slope if rng.random() < 0.5 else road.right_slope
        dy_edge = (c.xx - road.vx) / slope  # rows below the horizon where the edge passes column x
        y_edge = road.hz + dy_edge
        rail = (dy_edge > 1.0) & (c.yy <= y_edge) & (c.yy > y_edge - np.maximum(0.8 * road.ppm * dy_edge, 0.8))
        c.add(rail, "guardrail", "metal")
    sun_side, sun_len = float(rng.choice([-1.0, 1.0])), float(rng.uniform(0.3, 1.5))
    for _ in range(rng.poisson(1.0)):  # roadside trees
        y = rng.uniform(road.hz + 0.3 * (height - road.hz), height)
        x = road.left(y) - rng.uniform(0.5, 3) * road.scale(y) if rng.random() < 0.5 else road.right(y) + 2.0
        _tree(c, y, x, rng.uniform(1.5, 3.0) * road.scale(y), max(0.0, y - rng.uniform(5, 8) * road.scale(y)))
    objects: list[tuple[float, str]] = []
    for _ in range(rng.poisson(3.0)):
        objects.append((rng.uniform(road.hz + 2, height + 2),
                        rng.choice(["car", "truck", "bus", "motorcycle", "bicycle"], p=[0.7, 0.1, 0.07, 0.06, 0.07])))
    if rng.random() < 0.05:
        objects.append((road.hz + rng.uniform(1, 4), "train"))
    objects += [(rng.uniform(road.hz + 1, height + 3), "person") for _ in range(rng.poisson(1.5))]
    objects += [(rng.uniform(road.hz + 1, height + 3), "pole") for _ in range(rng.poisson(2.0))]
    objects += [(rng.uniform(road.hz + 1, height), "clutter") for _ in range(rng.poisson(0.7))]
    for y, what in sorted(objects):
        s = road.scale(y)
        if what in ("person", "pole", "clutter"):
            on_left = rng.random() < 0.5
            x = road.left(y) - rng.uniform(0.2, 1.5) * s if on_left else road.right(y) + rng.uniform(0.2, 1.5) * s
            if what == "person":
                shade = float(c.shadow[min(int(y), height - 1), int(np.clip(x, 0, width - 1))])
                _cast_shadow(c, road, y, x - 0.25 * s, x + 0.25 * s, 1.75 * s, sun_side, sun_len)
                _person(c, y, x, "person", shade, s)
            elif what == "pole":
                _pole(c, road, y, x)
            else:
                size = rng.uniform(0.5, 1.2) * s
                c.add(c.rect(y - size, y + 0.5, x - size / 2, x + size / 2), "clutter",
                      str(rng.choice(["painted", "metal", "bark"])))
        else:
            x = rng.uniform(road.left(y), road.right(y))
            _vehicle(c, road, what, y, x, sun_side, sun_len)
    if rng.random() < 0.35:  # ego-vehicle bonnet at the bottom: unlabelled in all three datasets
        c.add(c.ellipse(height + rng.uniform(0.0, 0.05) * height, width / 2, rng.uniform(0.08, 0.16) * height,
                        width * rng.uniform(0.5, 0.8)), "ego", "car_body", sun=0.5)
    unl = np.zeros((height, width), bool)
    for _ in range(rng.poisson(0.8)):
        unl |= c.ellipse(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, 0.12 * height),
                         rng.uniform(1, 0.12 * width))
    return Scene(c.inst, c.shadow, unl, c.roles, c.parts, c.kinds, c.vertical, c.sun, road.hz)
