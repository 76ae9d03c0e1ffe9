"""Synthetic abdominal CT phantoms, written as an nnU-Net v2 dataset.

The phantoms are samadapt's development data: deterministic, fast to make, and as *hard* as real
portal-venous abdominal CT where it matters for segmentation: neighbouring organs of near-identical
density, thin and small structures, rare lesions, partial volume, noise and a bias field.

Anatomy (one axial slice, radiological view: patient right on the image left, anterior at the top)
    body outline (per-case super-ellipse, flattened posteriorly, varying along z) with skin,
    subcutaneous fat (~-100 HU) and an abdominal-wall muscle ring (~50 HU); a curved CT table below;
    lumbar spine (cortical rim 600-900 HU, cancellous 150-300 HU, discs every ~32 mm, canal, arch,
    spinous and transverse processes), ribs in the wall of the upper slices, paraspinal, psoas and
    quadratus muscles, lung bases and the heart above a domed diaphragm, bowel loops (excursion sets
    of a smooth random field: enhancing wall ~85 HU, fluid or collapsed content, gas pockets) with thin
    mesenteric vessels, and the ascending / descending colon.
    Organs are smoothly deformed ellipsoids (random position, size, rotation, bend and surface waves),
    clipped to the abdominal cavity: liver (right + left lobe, domes touching the diaphragm, bright
    hepatic / portal vessel branches), gallbladder (fluid; absent in ~10% of cases), spleen (crescent),
    kidneys (cortex, medulla, renal-sinus fat at the hilum), stomach (wall, fluid, sometimes an air cap;
    kept in front of the pancreas), pancreas (thin tapered tube from head to tail), aorta and IVC (tubes
    along z), portal / splenic / superior mesenteric vessels (unlabelled, as bright as the IVC).

Label values (raw voxel value = the most specific structure) and nnU-Net region classes::

    raw  structure              class (dataset.json "labels")
    0    background             background: 0
    1    liver                  liver: [1, 10]
    2    spleen                 spleen: 2
    3    kidney_right           kidney_right: [3, 11]
    4    kidney_left            kidney_left: [4, 12]
    5    stomach                stomach: 5
    6    pancreas               pancreas: [6, 13]
    7    aorta                  aorta: 7
    8    ivc                    ivc: 8
    9    gallbladder            gallbladder: 9
    10   liver lesion           liver_lesion: 10
    11   right-kidney lesion    kidney_lesion: [11, 12]
    12   left-kidney lesion
    13   pancreas lesion        pancreas_lesion: 13

A lesion voxel therefore belongs to its organ's class *and* to its lesion class; the two kidney sides
keep separate lesion values so that a kidney's class never contains the other kidney's lesions.
``PHANTOM_REGIONS_CLASS_ORDER`` (nnU-Net's ``regions_class_order``) maps predicted regions back to raw
values; that mapping writes 11 for every kidney lesion (the side follows from the kidney around it).

Densities (HU, portal-venous phase; every case draws its own contrast strength and offsets): liver
~100, spleen = liver + 0..18, kidney cortex ~155 / medulla ~120, pancreas ~90 and bowel wall = pancreas
- 12..+8, stomach wall 55-75, aorta ~160 and IVC = aorta - 5..30, portal vessels between the two,
gallbladder 0-20. The near-identical pairs liver/spleen, pancreas/bowel and aorta/IVC are deliberate.
Expected per-case mean HU over each organ's raw label, noise and partial volume included, lie in
``PHANTOM_HU_RANGES``.

Lesions (deformed spheres clipped to their organ, radius 3-22 mm, some only a voxel or two): liver in
~70% of cases (drawn in 78%, some too small to survive on the grid; 1-6 lesions: hypodense metastases,
hyperdense hypervascular lesions, cysts), each kidney in ~25% (cysts and solid masses), pancreas in
~25% (hypodense). Organs and lesions keep the class
imbalance of real data: the gallbladder, pancreas and lesions occupy few slices and voxels.

Image formation: tissues are painted on a grid supersampled 2x along every axis, then block-averaged
(partial volume); labels take the block's most frequent value (ties go to the more specific, higher
value). Then a smooth soft-tissue texture, a smooth bias field (up to ~12 HU), correlated Gaussian
noise (10-20 HU std), clipping to [-1024, 3071] and rounding to int16.

Geometry: arrays are ``(Z, Y, X)``; geometry tuples are SimpleITK's ``(x, y, z)`` in mm with the
identity direction (LPS: x to the patient's left, y posterior, z superior), the grid centred on the
scanner axis in x/y and a per-case couch position in z. The anatomy is laid out in millimetres, so a
coarser grid over the same field of view shows the same patient (default: 400 x 400 x 200 mm).

Determinism: case ``i`` of seed ``s`` is drawn from ``np.random.default_rng([s, i])`` only, so 10 cases
equal the first 10 of 20, and the same call gives bit-identical arrays on the same machine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from samadapt.errors import ConfigError
from samadapt.io.atomic import write_json_atomic
from samadapt.io.volume import Geometry, write_volume

PHANTOM_VERSION = 1
DEFAULT_SIZE: tuple[int, int, int] = (40, 160, 160)
DEFAULT_SPACING: tuple[float, float, float] = (2.5, 2.5, 5.0)
IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
HU_MIN, HU_MAX = -1024, 3071

PHANTOM_LABELS: dict[str, int | list[int]] = {
    "background": 0,
    "liver": [1, 10],
    "spleen": 2,
    "kidney_right": [3, 11],
    "kidney_left": [4, 12],
    "stomach": 5,
    "pancreas": [6, 13],
    "aorta": 7,
    "ivc": 8,
    "gallbladder": 9,
    "liver_lesion": 10,
    "kidney_lesion": [11, 12],
    "pancreas_lesion": 13,
}
"""The dataset.json ``labels`` mapping: class name -> raw value or list of raw values (a region)."""

PHANTOM_REGIONS_CLASS_ORDER: list[int] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
"""nnU-Net's ``regions_class_order``: the raw value written for each non-background class, in order."""

PHANTOM_HU_RANGES: dict[str, tuple[float, float]] = {
    "liver": (70.0, 135.0),
    "spleen": (75.0, 150.0),
    "kidney_right": (80.0, 180.0),
    "kidney_left": (80.0, 180.0),
    "stomach": (-500.0, 90.0),
    "pancreas": (30.0, 125.0),
    "aorta": (105.0, 200.0),
    "ivc": (80.0, 185.0),
    "gallbladder": (-40.0, 50.0),
}
"""Expected range of a case's mean HU over each organ's raw label value at the default grid (noise and
partial volume included; over 40 cases of seed 0 the means stayed well inside). Coarser grids have more
partial volume, which pulls thin organs (pancreas) towards the surrounding fat."""

CHANNEL_NAMES = {"0": "CT"}
_FILE_ENDING = ".nii.gz"
_MARKER = ".samadapt_phantoms.json"
_SUPERSAMPLE = 2

# Tissues painted on the supersampled grid (uint8 ids); each maps to one raw label value.
(_AIR, _SKIN, _SUBCUT_FAT, _MUSCLE, _VISCERAL_FAT, _BOWEL_WALL, _BOWEL_CONTENT, _BOWEL_GAS, _CORTICAL_BONE,
 _CANCELLOUS_BONE, _DISC, _CSF, _LUNG, _TABLE, _VESSEL, _RENAL_SINUS, _HEART) = range(17)
(_LIVER, _LIVER_VESSEL, _SPLEEN, _KR_CORTEX, _KR_MEDULLA, _KL_CORTEX, _KL_MEDULLA, _STOMACH_WALL,
 _STOMACH_FLUID, _STOMACH_AIR, _PANCREAS, _AORTA, _IVC, _GALLBLADDER) = range(20, 34)
_FIRST_LESION = 64

_TISSUE_LABEL = np.zeros(256, np.uint8)
for _tissue, _value in ((_LIVER, 1), (_LIVER_VESSEL, 1), (_SPLEEN, 2), (_KR_CORTEX, 3), (_KR_MEDULLA, 3),
                        (_KL_CORTEX, 4), (_KL_MEDULLA, 4), (_STOMACH_WALL, 5), (_STOMACH_FLUID, 5),
                        (_STOMACH_AIR, 5), (_PANCREAS, 6), (_AORTA, 7), (_IVC, 8), (_GALLBLADDER, 9)):
    _TISSUE_LABEL[_tissue] = _value


class _TissueSet:
    """A set of tissue ids, tested with a few range comparisons (much faster than a lookup-table gather)."""

    def __init__(self, *tissues: int):
        ids = sorted(set(tissues))
        self.ranges: list[tuple[int, int]] = []
        for t in ids:
            if self.ranges and self.ranges[-1][1] == t - 1:
                self.ranges[-1] = (self.ranges[-1][0], t)
            else:
                self.ranges.append((t, t))

    def test(self, tissue: np.ndarray) -> np.ndarray:
        """Boolean array: ``tissue`` (uint8 ids) is in the set."""
        result = None
        for lo, hi in self.ranges:
            hit = tissue == lo if lo == hi else (tissue >= lo) & (tissue <= hi) if hi < 255 else tissue >= lo
            result = hit if result is None else result | hit
        return result if result is not None else np.zeros(tissue.shape, bool)


_CAVITY = (_VISCERAL_FAT, _BOWEL_WALL, _BOWEL_CONTENT, _BOWEL_GAS)
_ONTO_CAVITY = _TissueSet(*_CAVITY)
_ONTO_SOFT = _TissueSet(*_CAVITY, _MUSCLE)
_ONTO_BODY = _TissueSet(*range(2, 256))  # everything but air and skin
_ONTO_VESSEL = _TissueSet(*_CAVITY, _MUSCLE, _LUNG, _LIVER, _LIVER_VESSEL, _SPLEEN, _PANCREAS, _STOMACH_WALL,
                    _KR_CORTEX, _KL_CORTEX, _RENAL_SINUS, _GALLBLADDER, _VESSEL)
_ONTO_LIVER = _TissueSet(_LIVER, _LIVER_VESSEL)


@dataclass
class PhantomCase:
    """One synthetic CT case.

    ``image``: ``(Z, Y, X)`` int16 HU; ``label``: ``(Z, Y, X)`` uint8 raw label values (see the module
    docstring); ``spacing`` and ``origin``: ``(x, y, z)`` mm; direction is the identity.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def geometry(self) -> Geometry:
        """The case's grid as a :class:`Geometry` (size ``(X, Y, Z)``, identity direction)."""
        Z, Y, X = self.image.shape
        return Geometry(size=(X, Y, Z), spacing=tuple(self.spacing), origin=tuple(self.origin),
                        direction=IDENTITY_DIRECTION)


# ----------------------------------------------------------------------------------------------------------
# Building blocks: supersampled canvas, smooth random fields, shapes
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Box:
    """A sub-grid of the canvas: index slices ``(z, y, x)`` and its coordinates (mm) as broadcastable arrays."""

    slices: tuple[slice, slice, slice]
    z: np.ndarray  # (nz, 1, 1)
    y: np.ndarray  # (1, ny, 1)
    x: np.ndarray  # (1, 1, nx)


class _Canvas:
    """The supersampled tissue map ``(f*Z, f*Y, f*X)`` uint8 and body-centred coordinates in mm.

    Coordinates are LPS-like: ``x`` to the patient's left, ``y`` posterior, ``z`` superior, measured from
    the body centre (``offset`` is the body centre in grid-centred scanner coordinates).
    """

    def __init__(self, size: tuple[int, int, int], spacing: tuple[float, float, float], factor: int,
                 offset: tuple[float, float, float]):
        Z, Y, X = size
        sx, sy, sz = spacing

        def axis(n: int, step: float, shift: float) -> np.ndarray:
            k = np.arange(n * factor, dtype=np.float64)
            return (((k + 0.5) / factor - 0.5 - (n - 1) / 2.0) * step - shift).astype(np.float32)

        self.x = axis(X, sx, offset[0])
        self.y = axis(Y, sy, offset[1])
        self.z = axis(Z, sz, offset[2])
        self.tissue = np.zeros((Z * factor, Y * factor, X * factor), np.uint8)

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> _Box | None:
        """The sub-grid inside ``lo..hi`` (``(x, y, z)`` mm), or None when it misses the grid."""
        index = []
        for axis, a, b in zip((self.x, self.y, self.z), lo, hi, strict=True):
            i0, i1 = int(np.searchsorted(axis, a)), int(np.searchsorted(axis, b, side="right"))
            if i1 <= i0:
                return None
            index.append(slice(i0, i1))
        sx, sy, sz = index
        return _Box((sz, sy, sx), self.z[sz][:, None, None], self.y[sy][None, :, None], self.x[sx][None, None, :])

    def full(self) -> _Box:
        return _Box((slice(None),) * 3, self.z[:, None, None], self.y[None, :, None], self.x[None, None, :])

    def paint(self, tissue: int, box: _Box, mask: np.ndarray, onto: _TissueSet | None) -> None:
        """Set ``tissue`` where ``mask`` holds (broadcast over ``box``) and the current tissue is in ``onto``."""
        view = self.tissue[box.slices]
        mask = np.broadcast_to(mask, view.shape)
        if onto is not None:
            mask = mask & onto.test(view)
        view[mask] = tissue


class _Waves:
    """A smooth random field: a normalised sum of plane waves with random directions and wavelengths.

    ``__call__(z, y, x)`` takes coordinate arrays broadcastable as ``(nz,1,1), (1,ny,1), (1,1,nx)`` (mm) and
    returns the field ``(nz, ny, nx)`` float32 with zero mean and unit variance. The sum over waves is done
    as one matrix product (separable in z vs. the axial plane), so a full-volume field is cheap.
    """

    def __init__(self, rng: np.random.Generator, wavelength: tuple[float, float], n_waves: int = 12,
                 anisotropy: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        directions = rng.standard_normal((n_waves, 3)) * np.asarray(anisotropy)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lam = np.exp(rng.uniform(math.log(wavelength[0]), math.log(wavelength[1]), n_waves))
        self.k = (2 * math.pi / lam)[:, None] * directions  # (n, 3) rad/mm in (x, y, z)
        self.phase = rng.uniform(0, 2 * math.pi, n_waves)

    def __call__(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        z1, y1, x1 = (np.asarray(a, np.float64).ravel() for a in (z, y, x))
        n = len(self.phase)
        # cos(a + b + c) from 1D factors only: a = k_x x, b = k_y y + phase, c = k_z z.
        ax = self.k[:, 0, None] * x1[None, :]
        by = self.k[:, 1, None] * y1[None, :] + self.phase[:, None]
        cz = self.k[:, 2, None] * z1[None, :]
        cos_x, sin_x = np.cos(ax).astype(np.float32)[:, None, :], np.sin(ax).astype(np.float32)[:, None, :]
        cos_y, sin_y = np.cos(by).astype(np.float32)[:, :, None], np.sin(by).astype(np.float32)[:, :, None]
        right = np.empty((2, n, len(y1), len(x1)), np.float32)  # cos(a + b), sin(a + b) per wave
        right[0] = cos_y * cos_x - sin_y * sin_x
        right[1] = sin_y * cos_x + cos_y * sin_x
        left = np.concatenate([np.cos(cz), -np.sin(cz)]).T.astype(np.float32) * np.float32(math.sqrt(2.0 / n))
        # (nz, 2n) x (2n, ny*nx); einsum's own loops rather than BLAS: multi-threaded BLAS stalls badly on a
        # busy machine, and this keeps results independent of the thread count
        field = np.einsum("zk,kp->zp", left, right.reshape(2 * n, -1), optimize=False)
        return field.reshape(len(z1), len(y1), len(x1))


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 matrix whose columns are an organ's local axes in body coordinates (z-y-x Euler angles)."""
    return Rotation.from_euler("zyx", angles_deg, degrees=True).as_matrix()


@dataclass
class _Blob:
    """A smoothly deformed, optionally bent ellipsoid in body coordinates (mm)."""

    center: np.ndarray  # (x, y, z)
    radii: np.ndarray  # semi-axes along the local axes
    rotation: np.ndarray  # 3x3, columns = local axes
    waves: _Waves
    amplitude: float  # surface waviness in units of the radius
    bend: float = 0.0  # local y shifted by -bend * u_x^2 (banana / bean shapes)

    @classmethod
    def draw(cls, rng: np.random.Generator, center: Sequence[float], radii: Sequence[float],
             angles: Sequence[float], amplitude: float, bend: float = 0.0) -> _Blob:
        mean_radius = float(np.mean(radii))
        waves = _Waves(rng, (0.6 * mean_radius, 2.0 * mean_radius), n_waves=8)
        return cls(np.asarray(center, float), np.asarray(radii, float), _rotation(angles), waves, amplitude, bend)

    def point(self, local: Sequence[float]) -> np.ndarray:
        """Body coordinates of a point given in normalised local coordinates (|u| = 1 on the surface)."""
        return self.center + self.rotation @ (np.asarray(local) * self.radii)

    def evaluate(self, canvas: _Canvas) -> tuple[_Box, np.ndarray, list[np.ndarray]] | None:
        """``(box, q, u)``: ``q < 1`` inside (deformed normalised radius), ``u`` the local coordinates."""
        reach = float(self.radii.max()) * (1.0 + 3.0 * self.amplitude + abs(self.bend))
        box = canvas.box(self.center - reach, self.center + reach)
        if box is None:
            return None
        d = (box.x - np.float32(self.center[0]), box.y - np.float32(self.center[1]),
             box.z - np.float32(self.center[2]))
        R = self.rotation.astype(np.float32)
        u = [(R[0, i] * d[0] + R[1, i] * d[1] + R[2, i] * d[2]) / np.float32(self.radii[i]) for i in range(3)]
        if self.bend:
            u[1] = u[1] + np.float32(-self.bend) * u[0] * u[0]
        q = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
        q += np.float32(self.amplitude) * self.waves(box.z, box.y, box.x)
        return box, q, u


def _segment_mask(canvas: _Canvas, a: Sequence[float], b: Sequence[float], radius: float
                  ) -> tuple[_Box, np.ndarray] | None:
    """Voxels within ``radius`` mm of the segment ``a``-``b`` (a straight vessel)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    box = canvas.box(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
    if box is None:
        return None
    ab = b - a
    length2 = float(ab @ ab) or 1.0
    px, py, pz = box.x - np.float32(a[0]), box.y - np.float32(a[1]), box.z - np.float32(a[2])
    t = np.clip((px * np.float32(ab[0]) + py * np.float32(ab[1]) + pz * np.float32(ab[2])) / np.float32(length2),
                0, 1)
    dx, dy, dz = px - t * np.float32(ab[0]), py - t * np.float32(ab[1]), pz - t * np.float32(ab[2])
    return box, dx * dx + dy * dy + dz * dz < np.float32(radius * radius)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------------------------------------
# The phantom
# ----------------------------------------------------------------------------------------------------------


def _tissue_hu(rng: np.random.Generator) -> np.ndarray:
    """Per-case HU of every tissue id (256 float32); portal-venous phase with a random contrast strength."""
    hu = np.zeros(256, np.float32)
    e = rng.uniform(0.85, 1.15)  # contrast enhancement strength of this case
    liver = 55 + 45 * e + rng.normal(0, 5)
    pancreas = 45 + 45 * e + rng.normal(0, 5)
    aorta = 45 + 115 * e + rng.normal(0, 8)
    ivc = aorta - rng.uniform(5, 30)
    cortex = 35 + 120 * e + rng.normal(0, 6)
    subcut = rng.uniform(-115, -90)
    visceral = subcut + rng.uniform(-5, 10)
    values = {
        _AIR: -1000.0, _SKIN: rng.uniform(30, 50), _SUBCUT_FAT: subcut, _MUSCLE: rng.uniform(45, 60),
        _VISCERAL_FAT: visceral, _BOWEL_WALL: pancreas + rng.uniform(-12, 8),
        _BOWEL_CONTENT: rng.uniform(10, 40), _BOWEL_GAS: -rng.uniform(850, 980),
        _CORTICAL_BONE: rng.uniform(600, 900), _CANCELLOUS_BONE: rng.uniform(150, 300),
        _DISC: rng.uniform(70, 100), _CSF: rng.uniform(5, 20), _LUNG: rng.uniform(-880, -820),
        _TABLE: rng.uniform(50, 250), _VESSEL: (aorta + ivc) / 2 + rng.normal(0, 5),
        _RENAL_SINUS: visceral + rng.uniform(10, 40), _HEART: rng.uniform(90, 130),
        _LIVER: liver, _LIVER_VESSEL: liver + rng.uniform(35, 60), _SPLEEN: liver + rng.uniform(0, 18),
        _KR_CORTEX: cortex, _KR_MEDULLA: cortex - rng.uniform(20, 40), _KL_CORTEX: cortex + rng.normal(0, 4),
        _KL_MEDULLA: cortex - rng.uniform(20, 40), _STOMACH_WALL: rng.uniform(55, 75),
        _STOMACH_FLUID: rng.uniform(5, 35), _STOMACH_AIR: -rng.uniform(950, 1000), _PANCREAS: pancreas,
        _AORTA: aorta, _IVC: ivc, _GALLBLADDER: rng.uniform(0, 20),
    }
    for tissue, value in values.items():
        hu[tissue] = value
    return hu


@dataclass
class _Body:
    """Per-case body habitus and the derived landmarks (body-centred mm)."""

    half_width: float  # A
    anterior: float  # B_ant
    posterior: float  # B_post
    fat: tuple[float, float, float]  # subcutaneous fat: anterior, lateral, posterior (mm)
    muscle: tuple[float, float, float]  # wall muscle thickness: anterior, lateral, posterior (mm)
    spine_y: float  # vertebral body centre
    x_scale: float  # organ x positions relative to the nominal body
    y_scale: float  # organ y positions anterior of the spine relative to the nominal body
    z_scale: float
    dome_top: float  # height of the diaphragm's central dome (mm)
    dome_right: float  # extra height of the right hemidiaphragm (mm)

    def place(self, x: float, y: float, z: float) -> np.ndarray:
        """Body coordinates of a nominal position (nominal body: cavity +-130 mm wide, spine at y=20)."""
        y_actual = self.spine_y + (y - 20.0) * (self.y_scale if y < 20.0 else 1.0)
        return np.array([x * self.x_scale, y_actual, z * self.z_scale])

    def dome(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Height ``z`` of the diaphragm above body position ``(x, y)`` (mm): highest centrally, lowest in the
        posterolateral recesses, higher on the right."""
        xn = np.asarray(x) / (130 * self.x_scale)
        post = np.clip((np.asarray(y) - self.spine_y + 40) / 110, 0, None)
        return self.dome_top - 70 * xn ** 2 - 55 * post ** 2 + self.dome_right * (np.asarray(x) < 0)

    def under_dome(self, x: float, y: float, depth: float) -> np.ndarray:
        """Body coordinates of nominal ``(x, y)`` at ``depth`` mm below the diaphragm."""
        point = self.place(x, y, 0.0)
        point[2] = float(self.dome(point[0], point[1])) - depth
        return point


def _draw_body(rng: np.random.Generator) -> _Body:
    A = rng.uniform(140, 175)
    B_ant = rng.uniform(100, 130)
    B_post = rng.uniform(95, 115)
    fat_scale = rng.uniform(0.4, 1.6)
    fat = (18 * fat_scale * rng.uniform(0.8, 1.2), 20 * fat_scale * rng.uniform(0.8, 1.2),
           12 * fat_scale * rng.uniform(0.8, 1.2))
    muscle = (rng.uniform(8, 12), rng.uniform(6, 10), rng.uniform(3, 6))
    spine_y = B_post - fat[2] - 2 - muscle[2] - 66
    cavity_half_width = A - fat[1] - muscle[1] - 2
    cavity_front = -(B_ant - fat[0] - muscle[0] - 2)
    z_scale = rng.uniform(0.9, 1.1)
    return _Body(A, B_ant, B_post, fat, muscle, spine_y, x_scale=cavity_half_width / 130.0,
                 y_scale=(spine_y - cavity_front) / 105.0, z_scale=z_scale,
                 dome_top=rng.uniform(120, 150) * z_scale, dome_right=rng.uniform(0, 15))


def _paint_body_wall(canvas: _Canvas, body: _Body, rng: np.random.Generator) -> None:
    """Skin, subcutaneous fat, wall muscle and the (visceral-fat) cavity, plus ribs and the table."""
    harmonics = [(k, rng.uniform(0, 0.025), rng.uniform(0, 2 * math.pi)) for k in range(2, 6)]
    p_ant, p_post = rng.uniform(2.0, 2.5), rng.uniform(3.0, 4.0)
    z_taper = rng.uniform(-0.06, 0.06), rng.uniform(-0.04, 0.04)
    y2, x2 = canvas.y[:, None], canvas.x[None, :]
    theta = np.arctan2(y2, x2)
    r = np.hypot(x2, y2)
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    posterior = y2 > 0
    p = np.where(posterior, p_post, p_ant)
    B = np.where(posterior, body.posterior, body.anterior)
    R = ((c / body.half_width) ** p + (s / B) ** p) ** (-1.0 / p)
    R *= 1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in harmonics)
    sin_t = np.sin(theta)
    fat = (body.fat[1] + (body.fat[0] - body.fat[1]) * np.clip(-sin_t, 0, None) ** 2
           + (body.fat[2] - body.fat[1]) * np.clip(sin_t, 0, None) ** 2)
    muscle = (body.muscle[1] + (body.muscle[0] - body.muscle[1]) * np.clip(-sin_t, 0, None) ** 2
              + (body.muscle[2] - body.muscle[1]) * np.clip(sin_t, 0, None) ** 2)
    zz = canvas.z[:, None, None] / 100.0
    scale = (1.0 + z_taper[0] * zz + z_taper[1] * zz * zz).astype(np.float32)
    depth = R.astype(np.float32)[None] * scale - r.astype(np.float32)[None]  # mm below the skin
    t_fat = (2.0 + fat).astype(np.float32)[None]
    t_muscle = (2.0 + fat + muscle).astype(np.float32)[None]
    # the layer count below the skin is the tissue id: air 0, skin 1, subcutaneous fat 2, muscle 3, cavity 4
    layer = canvas.tissue
    np.greater(depth, 0, out=layer, casting="unsafe")
    layer += depth > 2.0
    layer += depth > t_fat
    layer += depth > t_muscle

    del depth
    # Ribs: oblique bands through the wall of the upper abdomen (not at the midlines), computed on the
    # axial pixels of the wall ring only.
    arc = np.abs(np.angle(np.exp(1j * (theta - math.pi / 2))))  # 0 posterior midline .. pi anterior
    pitch, slope, z_low = rng.uniform(26, 32), rng.uniform(60, 90), rng.uniform(-75, -45) * body.z_scale
    rib_jitter = (rng.uniform(4, 9), rng.uniform(0, 2 * math.pi), rng.uniform(2, 5), rng.uniform(0, 2 * math.pi))
    rib_depth = 2.0 + fat + 0.25 * muscle  # outer surface of the ribs, mm below the skin
    lo, hi = float(scale.min()), float(scale.max())
    ring = (arc > 0.35) & (arc < 2.3) & (R * hi - r > rib_depth) & (R * lo - r < rib_depth + 7.0)
    pix = np.flatnonzero(ring)
    rows = np.flatnonzero(canvas.z > z_low)
    if pix.size and rows.size:
        zr = canvas.z[rows][:, None]
        arc_p, R_p, r_p = (v.ravel()[pix].astype(np.float32)[None] for v in (arc, R, r))
        depth_p = R_p * scale.ravel()[rows][:, None] - r_p  # (rows, pixels) mm below the skin
        offset = np.abs(depth_p - rib_depth.ravel()[pix].astype(np.float32)[None] - 3.5)
        # each rib descends anteriorly along its own slightly irregular path
        wobble = (rib_jitter[0] * np.sin(3.0 * arc_p + rib_jitter[1])
                  + rib_jitter[2] * np.sin(7.0 * arc_p + rib_jitter[3]))
        along = ((((zr + slope * arc_p + wobble - z_low) / pitch) % 1.0) < 0.3) & (zr > z_low + 22.0 * arc_p)
        flat = canvas.tissue.reshape(canvas.tissue.shape[0], -1)
        sub = flat[rows[:, None], pix[None, :]]
        cortical = along & (offset < 3.5) & _TissueSet(_SUBCUT_FAT, _MUSCLE, _VISCERAL_FAT).test(sub)
        sub[cortical] = _CORTICAL_BONE
        sub[cortical & (offset < 1.8)] = _CANCELLOUS_BONE
        flat[rows[:, None], pix[None, :]] = sub

    # CT table: a curved carbon plate below the patient.
    y_top = float((R * sin_t)[sin_t > 0.8].max()) * hi + rng.uniform(1, 6)  # the back rests on the table
    box = canvas.box((-230, y_top - 25, -1e4), (230, y_top + 35, 1e4))
    if box is not None:
        table_y = y_top - 4e-4 * box.x ** 2
        table = ((box.y > table_y) & (box.y < table_y + 6)) | ((box.y > table_y + 30) & (box.y < table_y + 35))
        canvas.paint(_TABLE, box, table, _TissueSet(_AIR))


def _paint_spine_and_muscles(canvas: _Canvas, body: _Body, rng: np.random.Generator) -> None:
    ys = body.spine_y
    level, z0 = rng.uniform(30, 34), rng.uniform(0, 34)
    disc_fraction = rng.uniform(0.2, 0.28)
    psoas_top, psoas_size = rng.uniform(0, 40) * body.z_scale, rng.uniform(0.8, 1.25)
    # Paraspinal muscles (erector spinae) and psoas, over the cavity fat / posterior wall.
    box = canvas.box((-110, ys - 60, -1e4), (110, ys + 100, 1e4))
    if box is None:
        return
    x, y, z = box.x, box.y, box.z
    erector = (np.abs((np.abs(x) - 34) / 30) ** 2.5 + np.abs((y - ys - 47) / 24) ** 2.5 < 1) & (np.abs(x) > 4)
    canvas.paint(_MUSCLE, box, erector, _ONTO_SOFT)
    grow = np.clip((psoas_top - z) / 130.0, 0, 1) * 15 * psoas_size + 3.0 * (z < psoas_top)
    psoas = ((np.abs(x) - 26 - grow) / (1.1 * grow + 1e-3)) ** 2 + ((y - ys + 2 - 0.3 * grow) / (grow + 1e-3)) ** 2 < 1
    canvas.paint(_MUSCLE, box, psoas, _ONTO_CAVITY)
    quadratus = ((np.abs(x) - 62) / 17) ** 2 + ((y - ys - 32) / 9) ** 2 < 1
    canvas.paint(_MUSCLE, box, quadratus & (z < psoas_top - 20), _ONTO_CAVITY)
    # Vertebrae: body (cortical rim, cancellous core), discs, arch, spinous and transverse processes, canal.
    phase = ((z - z0) / level) % 1.0
    disc = phase < disc_fraction
    vb = (x / 22) ** 2 + ((y - ys) / 17) ** 2
    vb_core = (x / 19.5) ** 2 + ((y - ys) / 14.5) ** 2
    canvas.paint(_CORTICAL_BONE, box, (vb < 1) & ~disc, _ONTO_BODY)
    canvas.paint(_CANCELLOUS_BONE, box, (vb_core < 1) & ~disc, _ONTO_BODY)
    canvas.paint(_DISC, box, (vb < 1.06) & disc, _ONTO_BODY)
    arch_levels = (phase > disc_fraction) & (phase < 0.85)
    rc = np.hypot(x, y - ys - 27)
    arch = (rc > 8.5) & (rc < 15) & (y > ys + 12)
    spinous = (x / 5.5) ** 2 + ((y - ys - 52) / 14) ** 2 < 1
    transverse = ((np.abs(x) - 30) / 15) ** 2 + ((y - ys - 22) / 4) ** 2 < 1
    canvas.paint(_CORTICAL_BONE, box, (arch | spinous) & arch_levels, _ONTO_BODY)
    canvas.paint(_CORTICAL_BONE, box, transverse & (phase > 0.45) & (phase < 0.62), _ONTO_BODY)
    canvas.paint(_CSF, box, rc < 8.5, _ONTO_BODY)


def _paint_lungs(canvas: _Canvas, body: _Body, rng: np.random.Generator) -> None:
    """Lung bases above a domed diaphragm (higher on the right), the diaphragm muscle below it and the
    heart on its centre."""
    heart = _Blob.draw(rng, body.place(15, -35, 0) + np.array([0, 0, body.dome_top + rng.uniform(20, 35)]),
                       np.array([65, 48, 45]) * _organ_scale(rng, 0.1), (rng.normal(-30, 8), 0, 0), amplitude=0.06)
    dome = body.dome(canvas.x[None, :], canvas.y[:, None])
    zmin = float(dome.min()) - 6
    box = canvas.box((-1e4, -1e4, zmin), (1e4, 1e4, 1e4))
    if box is None:
        return
    canvas.paint(_LUNG, box, box.z > dome[None], _ONTO_CAVITY)
    canvas.paint(_MUSCLE, box, box.z > dome[None] - 5, _ONTO_CAVITY)
    evaluated = heart.evaluate(canvas)
    if evaluated:
        canvas.paint(_HEART, evaluated[0], evaluated[1] < 1, _TissueSet(_LUNG))


def _paint_bowel(canvas: _Canvas, body: _Body, rng: np.random.Generator) -> None:
    """Bowel loops, mesenteric vessels and the ascending / descending colon, in the cavity fat.

    Loops are the excursion set ``f > t`` of a smooth random field ``f`` (irregular tubes ~2-3 cm across),
    with a ~3 mm enhancing wall at the boundary; some loops are collapsed (all wall, pancreas-like), the
    others hold fluid and gas pockets. ``t`` falls anteriorly and inferiorly, where bowel is densest.
    """
    loops = _Waves(rng, (35, 70), n_waves=16)
    kind = _Waves(rng, (60, 140), n_waves=8)
    gas = _Waves(rng, (12, 30), n_waves=10)
    mesentery = _Waves(rng, (40, 90), n_waves=12)
    crowding = rng.uniform(0.8, 1.2)
    # only inside the body's bounding box, in front of the spine and below the dome: half the grid or less
    box = canvas.box((-1.1 * body.half_width, -1.1 * body.anterior, -1e4),
                     (1.1 * body.half_width, body.spine_y + 30, 90))
    if box is not None:
        field = loops(box.z, box.y, box.x)
        anterior = np.clip((body.spine_y - 20 - box.y) / 100, 0, 1)
        inferior = np.clip((40 - box.z) / 150, 0, 1)
        superior = np.clip((box.z - 40) / 40, 0, 1)  # little bowel up among liver, stomach and spleen
        threshold = 1.2 - crowding * (1.0 * anterior + 0.5 * inferior) + 1.5 * superior
        bowel = field > threshold
        lumen = field > threshold + 0.35
        canvas.paint(_BOWEL_WALL, box, bowel, _ONTO_CAVITY)
        collapsed = kind(box.z, box.y, box.x) > 0.5
        canvas.paint(_BOWEL_CONTENT, box, lumen & ~collapsed, _TissueSet(_BOWEL_WALL))
        canvas.paint(_BOWEL_GAS, box, lumen & (gas(box.z, box.y, box.x) > 1.0), _TissueSet(_BOWEL_CONTENT))
        vessels = np.abs(mesentery(box.z, box.y, box.x)) < 0.035
        canvas.paint(_VESSEL, box, vessels, _TissueSet(_VISCERAL_FAT))
    # Colon: flank tubes filled with stool and gas.
    for sign, top in ((-1, rng.uniform(-20, 20)), (1, rng.uniform(20, 60))):
        cx = sign * rng.uniform(95, 110) * body.x_scale
        cy = body.place(0, rng.uniform(-10, 15), 0)[1]
        radius = rng.uniform(14, 22)
        box = canvas.box((cx - radius - 10, cy - radius - 10, -1e4), (cx + radius + 10, cy + radius + 10, top))
        if box is None:
            continue
        drift = 6 * np.sin(box.z / 40.0 + sign)
        rr = np.hypot(box.x - cx - drift, box.y - cy)
        canvas.paint(_BOWEL_WALL, box, rr < radius, _ONTO_CAVITY)
        inner = rr < radius - 3
        canvas.paint(_BOWEL_CONTENT, box, inner, _TissueSet(_BOWEL_WALL))
        canvas.paint(_BOWEL_GAS, box, inner & (gas(box.z, box.y, box.x) > 0.2), _TissueSet(_BOWEL_CONTENT))


def _organ_scale(rng: np.random.Generator, spread: float = 0.15) -> float:
    return float(rng.uniform(1 - spread, 1 + spread))


def _paint_organs(canvas: _Canvas, body: _Body, rng: np.random.Generator) -> dict[str, list[_Blob]]:
    """Liver, gallbladder, kidneys, spleen, stomach, pancreas and vessels; returns the lesion hosts."""
    place = body.place

    def jitter(sd: float) -> np.ndarray:
        return rng.normal(0, sd, 3)

    hosts: dict[str, list[_Blob]] = {}

    # Liver: right lobe + left lobe, then its vessel branches after the IVC/portal vein are placed.
    k = _organ_scale(rng) * (0.5 + 0.5 * body.x_scale)
    # The upper organs hang from the diaphragm: liver and spleen domes touch it, the gastric fundus nearly.
    radii = np.array([82, 90, 78]) * k
    right = _Blob.draw(rng, body.under_dome(-72, -10, 0.85 * radii[2]) + jitter(6), radii,
                       (rng.normal(0, 8), rng.normal(0, 5), rng.normal(0, 5)), amplitude=0.11)
    radii = np.array([52, 30, 38]) * k * _organ_scale(rng, 0.25)
    left = _Blob.draw(rng, body.under_dome(8, -58, 0.85 * radii[2]) + jitter(8), radii,
                      (rng.normal(-15, 8), rng.normal(0, 5), rng.normal(0, 8)), amplitude=0.1)
    for lobe in (right, left):
        evaluated = lobe.evaluate(canvas)
        if evaluated:
            box, q, _ = evaluated
            canvas.paint(_LIVER, box, q < 1, _ONTO_CAVITY)
    hosts["liver"] = [right, right, right, left]  # lesions mostly in the right lobe

    # Gallbladder: a pear under the liver, in ~90% of cases.
    if rng.random() < 0.9:
        gb = _Blob.draw(rng, place(-38, -52, -8) + jitter(6), np.array([14, 16, 32]) * _organ_scale(rng, 0.25),
                        (rng.normal(20, 10), rng.normal(0, 10), rng.normal(-25, 10)), amplitude=0.08, bend=0.3)
        evaluated = gb.evaluate(canvas)
        if evaluated:
            box, q, _ = evaluated
            canvas.paint(_GALLBLADDER, box, q < 1, _TissueSet(*_CAVITY, _LIVER))

    # Kidneys: cortex, medulla and hilum sinus fat; the local x axis points to the hilum (antero-medial).
    for name, sign, cortex, medulla, nominal in (("kidney_right", -1, _KR_CORTEX, _KR_MEDULLA, (-72, 38, -38)),
                                                 ("kidney_left", 1, _KL_CORTEX, _KL_MEDULLA, (74, 38, -25))):
        ks = _organ_scale(rng)
        center = place(*nominal) + jitter(6)
        # local x = hilum direction (medial, anterior), with a tilt so upper poles lean medially
        yaw = math.degrees(math.atan2(-0.6, -sign)) + rng.normal(0, 8)
        kidney = _Blob.draw(rng, center, np.array([25, 31, 55]) * ks,
                            (yaw, rng.normal(0, 5), sign * rng.uniform(5, 15)), amplitude=0.06, bend=-0.25)
        evaluated = kidney.evaluate(canvas)
        if evaluated:
            box, q, u = evaluated
            onto = _TissueSet(*_CAVITY, _LIVER, _SPLEEN)
            canvas.paint(cortex, box, q < 1, onto)
            canvas.paint(medulla, box, q < 0.72, _TissueSet(cortex))
            sinus = (u[0] > 0.25) & (q < 0.8) & (np.abs(u[2]) < 0.45)
            canvas.paint(_RENAL_SINUS, box, sinus, _TissueSet(cortex, medulla))
        hosts[name] = [kidney]

    # Spleen: a crescent along the left posterolateral ribs.
    radii = np.array([58, 22, 45]) * _organ_scale(rng, 0.2)
    spleen = _Blob.draw(rng, body.under_dome(106, 52, 0.8 * radii[2]) + jitter(8), radii,
                        (rng.normal(-55, 10), rng.normal(0, 6), rng.normal(0, 8)), amplitude=0.08, bend=0.45)
    evaluated = spleen.evaluate(canvas)
    if evaluated:
        box, q, _ = evaluated
        canvas.paint(_SPLEEN, box, q < 1, _ONTO_CAVITY)

    # Pancreas: a tapered tube from the head (right, low, in front of the IVC) across the aorta to the tail
    # (left, high, in front of the left kidney).
    ps = _organ_scale(rng, 0.2)
    head, neck, tail = place(-40, -30, -30) + jitter(5), place(-5, -42, -15) + jitter(5), place(85, -2, 5) + jitter(6)
    px = np.array([head[0], neck[0], tail[0]])
    coef_y = np.polyfit(px, [head[1], neck[1], tail[1]], 2)
    coef_z = np.polyfit(px, [head[2], neck[2], tail[2]], 2)
    pwaves = _Waves(rng, (25, 60), n_waves=8)

    def pancreas_axis(x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Centre ``(y, z)``, semi-axes ``(ry, rz)`` and the end taper (0 outside) of the gland at ``x``."""
        t = np.clip((x - head[0]) / (tail[0] - head[0]), 0, 1)
        zc = np.polyval(coef_z, x) - 8 * (1 - t) ** 3  # the uncinate process hangs down
        ends = np.clip((x - head[0] + 12) / 12, 0, 1) * np.clip((tail[0] + 6 - x) / 14, 0, 1)
        return np.polyval(coef_y, x), zc, (13 - 5 * t) * ps, (15 - 7 * t) * ps, ends

    box = canvas.box((head[0] - 20, min(head[1], neck[1]) - 40, min(head[2], neck[2]) - 45),
                     (tail[0] + 10, tail[1] + 40, tail[2] + 40))
    if box is not None:
        yc, zc, ry, rz, ends = pancreas_axis(box.x)
        qp = ((box.y - yc) / ry) ** 2 + ((box.z - zc) / rz) ** 2 + 0.25 * pwaves(box.z, box.y, box.x)
        canvas.paint(_PANCREAS, box, (qp < ends ** 2) & (ends > 0), _ONTO_CAVITY)
        # splenic vein along its posterior surface
        vein = np.hypot(box.y - (yc + ry * 0.95), box.z - zc) < 3.5
        canvas.paint(_VESSEL, box, vein & (box.x > neck[0]) & (box.x < tail[0] - 10), _TissueSet(*_CAVITY, _PANCREAS))
    hosts["pancreas"] = [_Blob(np.array([x, np.polyval(coef_y, x), np.polyval(coef_z, x)]),
                               np.array([12.0, 6.0, 8.0]) * ps, np.eye(3), pwaves, 0.0)
                         for x in np.linspace(head[0] + 5, tail[0] - 15, 4)]

    # Stomach: wall, fluid/food and sometimes an air cap anteriorly (patient supine). Its long axis runs from
    # the fundus (up, back, by the spleen) to the antrum (down, in front of the pancreas); at the levels of the
    # pancreas it stays in front of it (the lesser sac between them).
    stomach = _Blob.draw(rng, body.under_dome(45, -45, 70) + jitter(8), np.array([45, 32, 55]) * _organ_scale(rng, 0.2),
                         (rng.normal(35, 10), rng.normal(0, 6), rng.normal(-35, 6)), amplitude=0.08, bend=0.3)
    wall_mm, air_fraction = rng.uniform(3.5, 6.5), rng.choice([0.0, rng.uniform(0.1, 0.5)])
    evaluated = stomach.evaluate(canvas)
    if evaluated:
        box, q, _ = evaluated
        yc, zc, ry, rz, ends = pancreas_axis(np.clip(box.x, head[0] - 25, tail[0] + 25))
        behind_pancreas = (box.y > yc - ry - 5) & (np.abs(box.z - zc) < rz + 10)
        canvas.paint(_STOMACH_WALL, box, (q < 1) & ~behind_pancreas, _ONTO_CAVITY)
        lumen = (q < 1 - wall_mm / float(stomach.radii.min())) & ~(
            (box.y > yc - ry - 5 - wall_mm) & (np.abs(box.z - zc) < rz + 10 + wall_mm))  # keep a wall at the dent
        canvas.paint(_STOMACH_FLUID, box, lumen, _TissueSet(_STOMACH_WALL))
        air_level = stomach.center[1] - stomach.radii[1] + 2 * stomach.radii[1] * air_fraction
        canvas.paint(_STOMACH_AIR, box, lumen & (box.y < air_level), _TissueSet(_STOMACH_FLUID))

    # Great vessels: aorta (left of midline) and IVC (right, flattened), tubes along z.
    aorta_r = rng.uniform(10, 14)
    ivc_r = rng.uniform(11, 15), rng.uniform(7, 10)
    a_xy = np.array([rng.normal(16, 3), body.spine_y - 17 - aorta_r - rng.uniform(0, 4)])
    i_xy = np.array([rng.normal(-24, 3), body.spine_y - 17 - ivc_r[1] - rng.uniform(2, 8)])
    drift = rng.uniform(-0.06, 0.06, 4)
    for tissue, xy, (rx, ry), d in ((_AORTA, a_xy, (aorta_r, aorta_r), drift[:2]), (_IVC, i_xy, ivc_r, drift[2:])):
        box = canvas.box((xy[0] - 40, xy[1] - 40, -1e4), (xy[0] + 40, xy[1] + 40, 1e4))
        if box is not None:
            cx, cy = xy[0] + d[0] * box.z, xy[1] + d[1] * box.z
            canvas.paint(tissue, box, ((box.x - cx) / rx) ** 2 + ((box.y - cy) / ry) ** 2 < 1, _ONTO_VESSEL)
    # Superior mesenteric artery / vein in front of the aorta below the pancreas neck; portal vein to the hilum.
    sma_top = neck[2] + 5
    for dx, dy, radius in ((a_xy[0] - 10, a_xy[1] - aorta_r - 10, 3.5), (a_xy[0] - 26, a_xy[1] - aorta_r - 12, 5.5)):
        hit = _segment_mask(canvas, (dx, dy, -1e3), (dx, dy - 8, sma_top), radius)
        if hit:
            canvas.paint(_VESSEL, hit[0], hit[1], _TissueSet(*_CAVITY, _PANCREAS))
    hilum = place(-48, -22, 22) + jitter(4)
    confluence = np.array([neck[0] - 8, neck[1] + 10, neck[2]])
    hit = _segment_mask(canvas, confluence, hilum, rng.uniform(6, 8))
    if hit:
        canvas.paint(_VESSEL, hit[0], hit[1], _TissueSet(*_CAVITY, _PANCREAS, _LIVER))
    # Hepatic veins converge on the IVC near the dome; portal branches fan out from the hilum.
    ivc_top = np.array([i_xy[0] + drift[2] * 90, i_xy[1] + drift[3] * 90, rng.uniform(70, 95) * body.z_scale])
    branches = [(ivc_top, place(x, y, z) + jitter(8), rng.uniform(3, 5.5))
                for x, y, z in ((-120, -30, 55), (-70, -75, 70), (5, -65, 65))]
    branches += [(hilum, place(x, y, z) + jitter(10), rng.uniform(3, 5))
                 for x, y, z in ((-115, -5, 15), (-85, -60, 30), (-20, -60, 40))]
    for a, b, radius in branches:
        hit = _segment_mask(canvas, a, b, radius)
        if hit:
            canvas.paint(_LIVER_VESSEL, hit[0], hit[1], _ONTO_LIVER)
    return hosts


def _lesion_hu(rng: np.random.Generator, host: str, hu: np.ndarray) -> float:
    """HU of one lesion in ``host``: liver hypo/hyperdense/cyst, kidney cyst or solid, pancreas hypodense."""
    if host == "liver":
        kind = rng.choice(["hypo", "hyper", "cyst"], p=[0.6, 0.25, 0.15])
        if kind == "hypo":
            return float(hu[_LIVER] - rng.uniform(30, 65))
        if kind == "hyper":
            return float(hu[_LIVER] + rng.uniform(25, 55))
        return float(rng.uniform(0, 20))
    if host.startswith("kidney"):
        cortex = hu[_KR_CORTEX if host == "kidney_right" else _KL_CORTEX]
        return float(rng.uniform(0, 20) if rng.random() < 0.5 else cortex - rng.uniform(40, 75))
    return float(hu[_PANCREAS] - rng.uniform(25, 50))


_LESION_PLAN = {  # host: (probability a case has any, max count, radius range mm, raw label, host tissues)
    "liver": (0.78, 6, (3.0, 22.0), 10, (_LIVER, _LIVER_VESSEL)),
    "kidney_right": (0.25, 2, (3.0, 16.0), 11, (_KR_CORTEX, _KR_MEDULLA)),
    "kidney_left": (0.25, 2, (3.0, 16.0), 12, (_KL_CORTEX, _KL_MEDULLA)),
    "pancreas": (0.25, 1, (4.0, 12.0), 13, (_PANCREAS,)),
}


def _paint_lesions(canvas: _Canvas, rng: np.random.Generator, hosts: dict[str, list[_Blob]], hu: np.ndarray,
                   labels: np.ndarray) -> None:
    tissue = _FIRST_LESION
    for host, (probability, max_count, (r_lo, r_hi), raw, host_tissues) in _LESION_PLAN.items():
        if rng.random() >= probability:
            continue
        count = min(max_count, int(rng.geometric(0.5)))
        for _ in range(count):
            organ = hosts[host][int(rng.integers(len(hosts[host])))]
            where = organ.point(_random_direction(rng) * rng.uniform(0, 0.7))
            radius = _log_uniform(rng, r_lo, r_hi)
            lesion = _Blob.draw(rng, where, radius * rng.uniform(0.8, 1.2, 3), rng.uniform(0, 180, 3),
                                amplitude=0.12)
            hu[tissue], labels[tissue] = _lesion_hu(rng, host, hu), raw
            evaluated = lesion.evaluate(canvas)
            if evaluated:
                box, q, _ = evaluated
                canvas.paint(tissue, box, q < 1, _TissueSet(*host_tissues))
            tissue += 1


def _downsample(tissue: np.ndarray, hu: np.ndarray, labels: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Block-average the tissue map ``(f*Z, f*Y, f*X)`` into HU ``(Z, Y, X)`` float32 (partial volume) and take
    each block's most frequent label (ties go to the higher, more specific value) as uint8 ``(Z, Y, X)``.

    Only blocks that mix tissues are looked at sub-voxel by sub-voxel.
    """
    views = [tissue[dz::f, dy::f, dx::f] for dz in range(f) for dy in range(f) for dx in range(f)]
    first = views[0]
    mixed = np.zeros(first.shape, bool)
    for view in views[1:]:
        mixed |= view != first
    image, label = hu[first], labels[first]
    where = np.nonzero(mixed)
    if where[0].size:
        sub = np.stack([view[where] for view in views], axis=1)  # (n_mixed, f^3) tissue ids
        image[where] = hu[sub].mean(axis=1)
        values = labels[sub].astype(np.int32)
        counts = np.zeros(values.shape, np.int32)
        for j in range(values.shape[1]):
            counts += values == values[:, j:j + 1]
        best = np.argmax(counts * 256 + values, axis=1)
        label[where] = values[np.arange(len(best)), best]
    return image, label


def _check_grid(size: Sequence[int], spacing: Sequence[float]
                ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    try:
        size_t = tuple(int(s) for s in size)
        spacing_t = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(f"phantom grid: size {size!r} / spacing {spacing!r} must be three numbers each") from None
    if len(size_t) != 3 or min(size_t) < 1 or any(int(s) != s for s in size):
        raise ConfigError(f"phantom size {tuple(size)}: give three positive integers (Z, Y, X), e.g. 40,160,160")
    if len(spacing_t) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing_t):
        raise ConfigError(f"phantom spacing {tuple(spacing)}: give three positive mm values (x, y, z), e.g. 2.5,2.5,5")
    return size_t, spacing_t  # type: ignore[return-value]


def generate_phantom(rng: np.random.Generator, size: Sequence[int] = DEFAULT_SIZE,
                     spacing: Sequence[float] = DEFAULT_SPACING) -> PhantomCase:
    """Draw one synthetic abdominal CT case.

    ``size`` is the grid ``(Z, Y, X)`` in voxels, ``spacing`` the voxel size ``(x, y, z)`` in mm. Returns a
    :class:`PhantomCase` with ``image`` ``(Z, Y, X)`` int16 HU and ``label`` ``(Z, Y, X)`` uint8 raw values
    (:data:`PHANTOM_LABELS`). All randomness comes from ``rng``; the anatomy is laid out in mm, so the same
    ``rng`` state gives the same patient on any grid.
    """
    size, spacing = _check_grid(size, spacing)
    f = _SUPERSAMPLE
    hu = _tissue_hu(rng)
    labels = _TISSUE_LABEL.copy()
    body = _draw_body(rng)
    offset = (rng.normal(0, 8), rng.normal(-5, 8), rng.uniform(-25, 25))
    couch = round(float(rng.uniform(-450, -250)), 1)
    canvas = _Canvas(size, spacing, f, offset)

    _paint_body_wall(canvas, body, rng)
    _paint_spine_and_muscles(canvas, body, rng)
    _paint_lungs(canvas, body, rng)
    _paint_bowel(canvas, body, rng)
    hosts = _paint_organs(canvas, body, rng)
    _paint_lesions(canvas, rng, hosts, hu, labels)

    # Image formation: partial volume, texture, bias field, correlated noise.
    image, label = _downsample(canvas.tissue, hu, labels, f)
    del canvas
    Z, Y, X = size
    sx, sy, sz = spacing
    z = ((np.arange(Z) - (Z - 1) / 2) * sz)[:, None, None]
    y = ((np.arange(Y) - (Y - 1) / 2) * sy)[None, :, None]
    x = ((np.arange(X) - (X - 1) / 2) * sx)[None, None, :]
    texture = _Waves(rng, (6, 25), n_waves=16)(z, y, x) * np.float32(rng.uniform(3, 7))
    soft = np.clip((image + 150) / 100, 0, 1) * np.clip((350 - image) / 100, 0, 1)
    bias = _Waves(rng, (250, 600), n_waves=6)(z, y, x) * np.float32(rng.uniform(2, 12))
    image += texture * soft + bias
    sigma = float(rng.uniform(10, 20))
    noise = rng.standard_normal((Z, Y, X), dtype=np.float32)
    blur = 0.7
    noise = ndimage.gaussian_filter(noise, sigma=(0, blur, blur), mode="wrap")
    impulse = np.zeros(21)
    impulse[10] = 1
    kernel_norm = float(np.sqrt((ndimage.gaussian_filter1d(impulse, blur) ** 2).sum())) ** 2
    image += noise * np.float32(sigma / kernel_norm)
    image = np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)
    origin = (-(X - 1) / 2 * sx, -(Y - 1) / 2 * sy, couch)
    return PhantomCase(image=image, label=label, spacing=spacing, origin=origin)


# ----------------------------------------------------------------------------------------------------------
# The dataset on disk
# ----------------------------------------------------------------------------------------------------------


def _case_paths(out: Path, index: int) -> tuple[Path, Path]:
    case = f"phantom_{index:03d}"
    return out / "imagesTr" / f"{case}_0000{_FILE_ENDING}", out / "labelsTr" / f"{case}{_FILE_ENDING}"


def _generator_params(seed: int, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> dict:
    return {"name": "samadapt.data.phantoms", "version": PHANTOM_VERSION, "seed": int(seed),
            "size_zyx": list(size), "spacing_xyz": list(spacing)}


def _describe(params: dict) -> str:
    size = "x".join(str(v) for v in params.get("size_zyx", [])) or "?"
    spacing = "x".join(f"{v:g}" for v in params.get("spacing_xyz", [])) or "?"
    return (f"seed {params.get('seed')}, size {size} (Z,Y,X), spacing {spacing} mm (x,y,z), "
            f"generator version {params.get('version')}")


def _existing_params(out: Path) -> dict | None:
    """The generator parameters recorded in ``out`` (marker file or dataset.json), or None."""
    for path, key in ((out / _MARKER, None), (out / "dataset.json", "generator")):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            params = data.get(key) if key else data
            if isinstance(params, dict) and params.get("name") == "samadapt.data.phantoms":
                return params
    return None


def _count_cases(out: Path) -> int:
    return sum(1 for _ in (out / "labelsTr").glob(f"phantom_*{_FILE_ENDING}")) if (out / "labelsTr").is_dir() else 0


def write_phantom_dataset(out: str | Path, n_cases: int = 12, seed: int = 0, size: Sequence[int] = DEFAULT_SIZE,
                          spacing: Sequence[float] = DEFAULT_SPACING,
                          progress: Callable[[int, int], object] | None = None) -> Path:
    """Write ``n_cases`` phantoms to ``out`` in nnU-Net v2 layout and return ``out``.

    Files: ``imagesTr/phantom_XXX_0000.nii.gz`` (int16 HU), ``labelsTr/phantom_XXX.nii.gz`` (uint8 raw
    values) and, last, ``dataset.json`` (region labels, ``regions_class_order``, generator parameters);
    a small ``.samadapt_phantoms.json`` written first records the parameters so an unfinished folder is
    recognised.
    Case ``i`` is drawn from ``np.random.default_rng([seed, i])``. Resumable: cases whose image and label
    both exist are kept, so a killed run continues and ``n_cases`` can grow. ``progress(done, total)`` is
    called after each case, as in every other long step of samadapt. Raises :class:`ConfigError` for bad
    parameters or when ``out`` is a non-empty folder that is not a phantom dataset of the same seed, size,
    spacing and generator version.
    """
    size_t, spacing_t = _check_grid(size, spacing)
    if int(n_cases) < 1:
        raise ConfigError(f"phantom cases {n_cases}: give at least 1")
    out = Path(out)
    params = _generator_params(seed, size_t, spacing_t)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; give a folder for the phantom dataset")
    if out.is_dir() and any(out.iterdir()):
        found = _existing_params(out)
        if found is None:
            raise ConfigError(f"{out}: folder is not empty and is not a samadapt phantom dataset; "
                              "choose a new or empty folder")
        if found != params:
            raise ConfigError(f"{out}: holds phantoms made with {_describe(found)}, not {_describe(params)}; "
                              "choose a new folder or the same seed, size and spacing")
        existing = _count_cases(out)
        if existing > n_cases:
            raise ConfigError(f"{out}: already holds {existing} phantom cases, more than the {n_cases} asked for; "
                              f"ask for at least {existing} cases or choose a new folder")
    write_json_atomic(out / _MARKER, params)
    for index in range(int(n_cases)):
        image_path, label_path = _case_paths(out, index)
        if not (image_path.is_file() and label_path.is_file()):
            case = generate_phantom(np.random.default_rng([int(seed), index]), size_t, spacing_t)
            write_volume(case.label, case.geometry, label_path)
            write_volume(case.image, case.geometry, image_path)
        if progress is not None:
            progress(index + 1, int(n_cases))
    write_json_atomic(out / "dataset.json", {
        "name": "samadapt_phantoms",
        "description": "Synthetic portal-venous abdominal CT phantoms (9 organs, liver/kidney/pancreas lesions) "
                       "made by samadapt; region labels: a lesion voxel belongs to its organ and its lesion class.",
        "channel_names": CHANNEL_NAMES,
        "labels": PHANTOM_LABELS,
        "regions_class_order": PHANTOM_REGIONS_CLASS_ORDER,
        "numTraining": int(n_cases),
        "file_ending": _FILE_ENDING,
        "licence": "CC0-1.0 (synthetic)",
        "generator": params,
    })
    return out
