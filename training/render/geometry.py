"""Feature geometry in the canonical frame, and the pose that maps that frame to pixels.

The canonical frame is the 112 x 112 alignment template of ``service.vision.align``
(eyes at (38.3, 51.7) and (73.5, 51.5), nose tip at (56.0, 71.7), mouth corners at
(41.5, 92.4) and (70.7, 92.2)). A render is that frame mapped to pixels by one affine matrix
(template scale x small pose), so with zero pose the render *is* an aligned face at any output
size and its 5 landmarks land on ``template_landmarks(size)``.
"""

from __future__ import annotations

import math

import numpy as np

from service.vision.align import TEMPLATE_112
from training.render.facs import AU_CODES, AU_INDEX, as_aus
from training.render.params import Identity, Scene

TEMPLATE_SIZE = 112.0  # canonical units across the template square
FACE_MIDLINE_X = 56.0  # canonical x of the face's vertical midline
POSE_CENTRE = (56.0, 72.0)  # rotation / scale centre: the middle of the 5 template points
YAW_SQUASH = 0.12  # horizontal shrink of the whole face per unit |yaw|
# A head turn moves near parts more than far ones: sideways slide per unit yaw, canonical units.
FEATURE_YAW_SHIFT = 3.5  # eyes, brows, mouth, lines
NOSE_YAW_SHIFT = 5.5  # the nose sticks out furthest
EAR_YAW_SHIFT = 2.0  # ears sit behind the face and slide the other way (subtracted)
BROW_ABOVE_EYE = 11.5  # resting brow height above the eye centre, canonical units
BOX_ABOVE_BROWS = 6.0  # the face box starts this far above the highest brow point

Geometry = dict[str, np.ndarray]


def _au(aus: np.ndarray, code: int, side: int) -> float:
    return float(aus[side, AU_INDEX[code]])


def _au_mid(aus: np.ndarray, code: int) -> float:
    return float(aus[:, AU_INDEX[code]].mean())


def _side_features(
    identity: Identity, aus: np.ndarray, s: int, eye: np.ndarray, corner: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float], float, float, np.ndarray]:
    """Brow points (inner, middle, outer), lid heights (upper, lower) and the mouth corner of one half."""
    a = {code: _au(aus, code, s) for code in AU_CODES}
    out = -1.0 if s == 0 else 1.0  # direction away from the midline
    ex, ey = eye
    base = ey - BROW_ABOVE_EYE + identity.brow_dy
    # brows: AU1 lifts the inner end, AU2 the outer, AU4 pulls down and together
    brow_in = (
        ex - out * (8.0 - 2.5 * a[4] - 0.8 * a[9]),
        base + 1.0 - 7.0 * a[1] + 4.0 * a[4] + 2.0 * a[9],
    )
    brow_mid = (
        ex + out * (identity.brow_len * 0.5 - 8.0),
        base - identity.brow_arch - 2.8 * a[1] - 3.5 * a[2] + 2.8 * a[4] + 1.2 * a[9],
    )
    brow_out = (
        ex + out * (identity.brow_len - 8.0),
        base + 0.5 - 6.0 * a[2] + 1.0 * a[4] - 0.5 * a[1],
    )
    lid_up = max(identity.eye_open + 3.0 * a[5] - 1.3 * a[7] - 0.9 * a[6] - 0.6 * a[4] - 0.4 * a[9], 0.5)
    lid_low = max(identity.eye_low - 1.4 * a[7] - 1.3 * a[6], 0.4)
    # lip corners: AU12 up and out, AU14 in and tight, AU15 down, AU20 sideways, AU26 in and down
    dx_out = 3.5 * a[12] - 1.2 * a[14] + 0.6 * a[15] + 4.5 * a[20] - 1.5 * a[23] - 2.0 * a[26]
    dy = -5.5 * a[12] - 1.2 * a[14] + 5.0 * a[15] + 1.2 * a[20] + 3.0 * a[26] + 0.8 * a[16]
    return brow_in, brow_mid, brow_out, lid_up, lid_low, corner + (out * dx_out, dy)


def face_geometry(identity: Identity, aus: np.ndarray) -> Geometry:
    """Feature geometry in canonical units (before pose) for an identity and ``(2, 14)`` AUs.

    Keys (points are ``(x, y)``, per-side arrays are ``(2, ...)`` image-left first):
    ``eyes (2, 2)``, ``nose_tip (2,)``, ``mouth_corners (2, 2)``, ``brow_inner``,
    ``brow_mid``, ``brow_outer (2, 2)``, ``lid_upper``, ``lid_lower (2,)`` (lid heights),
    ``lip_top``, ``open_top``, ``open_bottom``, ``lip_bottom (1,)`` (mouth centre y values),
    ``chin (1,)``, ``nostril_lift (1,)``.
    """
    aus = as_aus(aus)
    t = TEMPLATE_112
    eyes = t[:2].copy()
    corners = t[3:5].copy()
    brow_in, brow_mid, brow_out = np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))
    lid_up, lid_low = np.zeros(2), np.zeros(2)
    for s in (0, 1):
        brow_in[s], brow_mid[s], brow_out[s], lid_up[s], lid_low[s], corners[s] = _side_features(
            identity, aus, s, eyes[s], corners[s]
        )
    a = {code: _au_mid(aus, code) for code in AU_CODES}
    a12_max, a12_min = max(_au(aus, 12, 0), _au(aus, 12, 1)), min(_au(aus, 12, 0), _au(aus, 12, 1))
    # a broad smile: both corners pulled, at least one past 0.35
    smile = max(a12_max - 0.35, 0.0) / 0.65 * a12_min
    mid_y = float(t[3:5, 1].mean()) + 0.5
    # upper lip: AU9 raises it (disgust's snarl), a broad smile parts the lips over the teeth
    open_top = mid_y - 2.8 * a[9] - 1.2 * smile - 0.8 * a[26] - 0.6 * a[20]
    open_bottom = mid_y + 10.0 * a[26] + 3.0 * a[16] + 2.5 * smile + 1.5 * a[20] + 0.8 * a[9]
    thin = 1.0 - 0.55 * a[23] - 0.25 * a[20] - 0.2 * a12_max - 0.2 * a[14]
    lip_top = open_top - identity.lip_up * thin - 1.0 * a[9]
    lip_bottom = open_bottom + identity.lip_low * thin + 1.2 * a[16]
    chin = identity.chin_y + 8.0 * a[26] + 1.5 * a[16]
    return {
        "eyes": eyes,
        "nose_tip": t[2].copy(),
        "mouth_corners": corners,
        "brow_inner": brow_in,
        "brow_mid": brow_mid,
        "brow_outer": brow_out,
        "lid_upper": lid_up,
        "lid_lower": lid_low,
        "lip_top": np.array([lip_top]),
        "open_top": np.array([open_top]),
        "open_bottom": np.array([open_bottom]),
        "lip_bottom": np.array([lip_bottom]),
        "chin": np.array([chin]),
        "nostril_lift": np.array([2.0 * a[9]]),
    }


def pose_matrix(scene: Scene) -> np.ndarray:
    """``(3, 3)`` canonical -> canonical pose: squash (yaw), scale, rotate about the landmark centre, shift."""
    cx, cy = POSE_CENTRE
    th = math.radians(scene.rotation_deg)
    c, s = math.cos(th) * scene.scale, math.sin(th) * scene.scale
    squash = 1.0 - YAW_SQUASH * abs(scene.yaw)
    lin = np.array([[c, -s], [s, c]]) @ np.diag([squash, 1.0])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = np.array([cx, cy]) - lin @ np.array([cx, cy]) + np.asarray(scene.shift)
    return m


def face_matrix(scene: Scene, size: int) -> np.ndarray:
    """``(2, 3)`` canonical -> pixel matrix of an aligned ``size`` x ``size`` face under the scene's pose."""
    k = size / TEMPLATE_SIZE
    return (np.diag([k, k, 1.0]) @ pose_matrix(scene))[:2]


def placed_matrix(scene: Scene, face_px: float, centre: tuple[float, float]) -> np.ndarray:
    """``(2, 3)`` canonical -> pixel matrix that puts the template square, ``face_px`` wide, at ``centre``."""
    cx, cy = centre
    k = face_px / TEMPLATE_SIZE
    half = 0.5 * TEMPLATE_SIZE
    place = np.array([[k, 0.0, cx - half * k], [0.0, k, cy - half * k], [0.0, 0.0, 1.0]])
    return (place @ pose_matrix(scene))[:2]


def landmarks_and_box(
    identity: Identity, g: Geometry, scene: Scene, matrix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(5, 2)`` pixel landmarks (eyes, nose tip, mouth corners) and the ``(4,)`` pixel face box."""
    feat_dx, nose_dx = FEATURE_YAW_SHIFT * scene.yaw, NOSE_YAW_SHIFT * scene.yaw
    pts = np.vstack([g["eyes"], g["nose_tip"][None], g["mouth_corners"]])
    pts[:, 0] += np.array([feat_dx, feat_dx, nose_dx, feat_dx, feat_dx])
    lm = pts @ matrix[:, :2].T + matrix[:, 2]
    brow_top = float(min(g["brow_inner"][:, 1].min(), g["brow_mid"][:, 1].min())) - BOX_ABOVE_BROWS
    x0, x1, chin = FACE_MIDLINE_X - identity.face_w, FACE_MIDLINE_X + identity.face_w, float(g["chin"][0])
    corners = np.array([[x0, brow_top], [x1, brow_top], [x0, chin], [x1, chin]])
    cp = corners @ matrix[:, :2].T + matrix[:, 2]
    box = np.array([cp[:, 0].min(), cp[:, 1].min(), cp[:, 0].max(), cp[:, 1].max()])
    return lm, box
