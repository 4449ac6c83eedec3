"""Procedural B-mode ultrasound videos with exact lesion masks (numpy + OpenCV, deterministic by seed).

The picture is built the way a scanner forms one, in the acquisition grid (rows = depth, columns = beam
lines), then scan-converted to the screen:

1. Tissue in its own coordinates: wavy layers with their own echogenicity (skin, fat with septa, muscle
   striations, gland), bright fascia lines, and one or more hypoechoic lesions whose outline is a smooth
   radial Fourier series that changes over time (deformation) and drifts (motion).
2. Probe motion maps screen pixels to tissue coordinates per frame (lateral slide, tilt, pressure, a
   slow elastic wobble), so tissue, scatterers and lesions all move together.
3. Speckle: complex Gaussian scatterers fixed in tissue (a few percent refreshed per frame, out-of-plane
   motion) weighted by sqrt(echogenicity) and convolved with a complex pulse-echo PSF; the envelope of
   that sum is Rayleigh distributed, as in real B-mode.
4. Depth attenuation integrated along each beam (lesions attenuate more → posterior shadow, or less →
   posterior enhancement for cyst-like ones), receiver noise, time-gain compensation, log compression.
5. Optional convex-probe sector scan conversion, and scanner-like text (probe, gain, depth scale).

The mask of frame t is the lesion region evaluated with the same coordinate maps as the image, so it is
exact to the pixel (no annotation noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["SynthVideo", "make_video", "video_seed"]


@dataclass
class SynthVideo:
    """One generated video: grey frames (F, S, S) uint8, binary masks (F, S, S) uint8 in {0, 1}."""

    frames: np.ndarray
    masks: np.ndarray
    info: dict = field(default_factory=dict)


def video_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Independent stream per video, so video k is the same whatever the number of videos generated."""
    return np.random.SeedSequence([int(seed), int(index)])


# --------------------------------------------------------------------------------------------- helpers


def _smooth_path(rng: np.random.Generator, t: np.ndarray, amplitude: float, n_terms: int = 3) -> np.ndarray:
    """A smooth random 1-D trajectory over normalised time t in [0, 1] (sum of slow sinusoids + drift)."""
    out = rng.uniform(-0.5, 0.5) * amplitude * t
    for _ in range(n_terms):
        freq = rng.uniform(0.3, 1.5)
        out = out + rng.uniform(0.2, 0.5) * amplitude * np.sin(2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi))
    return out


def _pulse_echo_psf(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Complex PSF (real, imag) kernels: Gaussian envelope, carrier along depth (axis 0)."""
    scale = size / 256.0
    sigma_axial = rng.uniform(0.8, 1.1) * scale
    sigma_lateral = rng.uniform(1.6, 2.4) * scale
    wavelength = rng.uniform(2.6, 3.4) * scale
    half_z = max(2, int(math.ceil(3 * sigma_axial)))
    half_x = max(2, int(math.ceil(3 * sigma_lateral)))
    z = np.arange(-half_z, half_z + 1, dtype=np.float32)[:, None]
    x = np.arange(-half_x, half_x + 1, dtype=np.float32)[None, :]
    envelope = np.exp(-(z**2) / (2 * sigma_axial**2) - (x**2) / (2 * sigma_lateral**2))
    phase = 2 * math.pi * z / wavelength
    kr = (envelope * np.cos(phase)).astype(np.float32)
    ki = (envelope * np.sin(phase)).astype(np.float32)
    norm = float(np.sqrt((kr**2 + ki**2).sum()))
    return kr / norm, ki / norm


def _convolve_complex(re: np.ndarray, im: np.ndarray, kr: np.ndarray, ki: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(re + i·im) * (kr + i·ki) with two 2-channel filter2D calls (correlation = convolution up to a flip)."""
    stacked = np.dstack([re, im])
    a = cv2.filter2D(stacked, cv2.CV_32F, kr, borderType=cv2.BORDER_REFLECT)
    b = cv2.filter2D(stacked, cv2.CV_32F, ki, borderType=cv2.BORDER_REFLECT)
    return a[..., 0] - b[..., 1], a[..., 1] + b[..., 0]


def _sample_noise(noise: np.ndarray, map_u: np.ndarray, map_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear lookup of the fixed complex scatterer field, renormalised so the variance does not flicker
    with the sub-pixel position (interpolating white noise shrinks its variance by up to 4x)."""
    sampled = cv2.remap(noise, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    fu = map_u - np.floor(map_u)
    fv = map_v - np.floor(map_v)
    gain = 1.0 / np.sqrt(((1 - fu) ** 2 + fu**2) * ((1 - fv) ** 2 + fv**2))
    return sampled[..., 0] * gain, sampled[..., 1] * gain


# --------------------------------------------------------------------------------------------- anatomy


@dataclass
class _Layer:
    depth: float  # top boundary, fraction of the field depth
    wave_amp: float
    wave_len: float
    wave_phase: float
    echo: float
    attenuation: float
    texture: str  # "plain" | "septa" | "striated"
    tex_freq: float
    tex_angle: float


@dataclass
class _Lesion:
    cu: float
    cv: float
    ax: float
    az: float
    angle: float
    harmonics: list[tuple[int, float, float, float, float]]  # (k, amplitude, phase, t-freq, t-phase)
    path_u: np.ndarray
    path_v: np.ndarray
    pulse: np.ndarray
    echo: float
    attenuation_factor: float
    rim: float
    kind: str


def _make_layers(rng: np.random.Generator) -> list[_Layer]:
    layers = [_Layer(0.0, 0.0, 1.0, 0.0, rng.uniform(2.0, 4.0), 1.0, "plain", 0.0, 0.0)]  # skin / near field
    depth = rng.uniform(0.04, 0.07)
    kinds = ["septa", "striated", "plain", "striated", "plain"]
    n = int(rng.integers(3, 5))
    for i in range(n):
        texture = kinds[i] if i < len(kinds) else "plain"
        echo = {"septa": rng.uniform(0.2, 0.4), "striated": rng.uniform(0.4, 0.7), "plain": rng.uniform(0.7, 1.2)}[texture]
        layers.append(
            _Layer(
                depth=depth,
                wave_amp=rng.uniform(0.005, 0.03),
                wave_len=rng.uniform(0.4, 1.4),
                wave_phase=rng.uniform(0, 2 * math.pi),
                echo=echo,
                attenuation=rng.uniform(0.8, 1.25),
                texture=texture,
                tex_freq=rng.uniform(18, 40),
                tex_angle=rng.uniform(-0.25, 0.25),
            )
        )
        depth += rng.uniform(0.12, 0.3) if i < n - 1 else 0.0
        if depth > 0.7:
            break
    # the deepest layer is the homogeneous "gland" the lesions sit in
    layers[-1].texture = "plain"
    layers[-1].echo = rng.uniform(0.8, 1.1)
    return layers


def _make_lesions(rng: np.random.Generator, n: int, width: float, height: float, t: np.ndarray) -> list[_Lesion]:
    lesions: list[_Lesion] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        for _attempt in range(20):
            ax = rng.uniform(0.1, 0.2) * width
            az = ax * rng.uniform(0.55, 1.1)
            cu = rng.uniform(0.25, 0.75) * width
            cv = rng.uniform(0.38, 0.72) * height
            if all(math.hypot(cu - pu, cv - pv) > (ax + pr) * 1.15 for pu, pv, pr in placed):
                break
        placed.append((cu, cv, ax))
        kind = str(rng.choice(["solid", "solid", "cyst"]))
        harmonics = []
        for k in range(2, 6):
            harmonics.append((k, rng.uniform(0.02, 0.12) / (k - 1), rng.uniform(0, 2 * math.pi), rng.uniform(0.5, 1.5), rng.uniform(0, 2 * math.pi)))
        lesions.append(
            _Lesion(
                cu=cu,
                cv=cv,
                ax=ax,
                az=az,
                angle=rng.uniform(-0.5, 0.5),
                harmonics=harmonics,
                path_u=_smooth_path(rng, t, 0.04 * width),
                path_v=_smooth_path(rng, t, 0.03 * height),
                pulse=1.0 + 0.06 * np.sin(2 * math.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 2 * math.pi)),
                echo=rng.uniform(0.03, 0.07) if kind == "cyst" else rng.uniform(0.1, 0.3),
                attenuation_factor=rng.uniform(0.05, 0.2) if kind == "cyst" else rng.uniform(2.5, 5.0),
                rim=rng.uniform(0.0, 3.0) if kind == "solid" else 0.0,
                kind=kind,
            )
        )
    return lesions


def _lesion_field(lesion: _Lesion, u: np.ndarray, v: np.ndarray, ti: int, tn: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radius rho and boundary radius R(theta, t): inside where rho < R."""
    du = u - (lesion.cu + lesion.path_u[ti])
    dv = v - (lesion.cv + lesion.path_v[ti])
    ca, sa = math.cos(lesion.angle), math.sin(lesion.angle)
    pu = (ca * du + sa * dv) / (lesion.ax * lesion.pulse[ti])
    pv = (-sa * du + ca * dv) / (lesion.az * lesion.pulse[ti])
    rho = np.sqrt(pu * pu + pv * pv)
    theta = np.arctan2(pv, pu)
    boundary = np.ones_like(rho)
    for k, amp, phase, freq, tphase in lesion.harmonics:
        boundary += amp * (1.0 + 0.6 * math.sin(2 * math.pi * freq * tn + tphase)) * np.cos(k * theta + phase)
    return rho, boundary


# --------------------------------------------------------------------------------------------- screen layout


@dataclass
class _Screen:
    size: int
    x0: int
    y0: int
    x1: int
    y1: int
    sector: bool
    map_x: np.ndarray | None = None  # screen -> acquisition grid (sector only)
    map_y: np.ndarray | None = None
    valid: np.ndarray | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _make_screen(size: int, sector: bool) -> _Screen:
    top = max(6, int(round(0.1 * size)))
    screen = _Screen(size, int(round(0.05 * size)), top, size - int(round(0.09 * size)), size - int(round(0.02 * size)), sector)
    if sector:
        depth_px, beams = screen.grid_shape
        area_w = screen.x1 - screen.x0
        r0 = 0.35 * depth_px
        theta_max = math.radians(36.0)
        apex_y = screen.y0 - r0 * math.cos(theta_max)
        r1 = screen.y1 - apex_y
        theta_max = min(theta_max, math.asin(min(1.0, area_w / (2.0 * r1))))
        apex_x = (screen.x0 + screen.x1 - 1) / 2.0
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        dx = xs - apex_x
        dy = ys - apex_y
        r = np.sqrt(dx * dx + dy * dy)
        th = np.arctan2(dx, dy)
        gy = (r - r0) / (r1 - r0) * (depth_px - 1)
        gx = (th + theta_max) / (2 * theta_max) * (beams - 1)
        screen.valid = (gy >= 0) & (gy <= depth_px - 1) & (gx >= 0) & (gx <= beams - 1) & (ys >= screen.y0)
        screen.map_x = gx.astype(np.float32)
        screen.map_y = gy.astype(np.float32)
    return screen


def _to_screen(screen: _Screen, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out_img = np.zeros((screen.size, screen.size), np.uint8)
    out_mask = np.zeros((screen.size, screen.size), np.uint8)
    if screen.sector:
        assert screen.map_x is not None and screen.map_y is not None and screen.valid is not None
        img = cv2.remap(image, screen.map_x, screen.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        msk = cv2.remap(mask, screen.map_x, screen.map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
        out_img[screen.valid] = img[screen.valid]
        out_mask[screen.valid] = msk[screen.valid]
    else:
        out_img[screen.y0 : screen.y1, screen.x0 : screen.x1] = image
        out_mask[screen.y0 : screen.y1, screen.x0 : screen.x1] = mask
    return out_img, out_mask


def _draw_overlay_text(img: np.ndarray, screen: _Screen, labels: dict, frame_index: int, fps: float) -> None:
    """Scanner-like annotations outside the imaging area, so they never cover the lesion or its mask."""
    size = screen.size
    scale = 0.3 * size / 256.0
    thick = 1
    font = cv2.FONT_HERSHEY_SIMPLEX
    line_h = max(4, int(round(0.04 * size)))
    colour = 210
    seconds = frame_index / fps
    cv2.putText(img, f"{labels['probe']} {labels['freq']}MHz  {labels['preset']}", (2, line_h), font, scale, colour, thick, cv2.LINE_AA)
    cv2.putText(img, f"G{labels['gain']} DR{labels['dr']} FR{int(fps)}  {seconds:05.2f}s", (2, 2 * line_h), font, scale, colour, thick, cv2.LINE_AA)
    cv2.putText(img, "SYNTHETIC", (size - int(0.3 * size), line_h), font, scale, 160, thick, cv2.LINE_AA)
    # depth scale with a tick per centimetre and a focus marker, in the right margin
    depth_cm = labels["depth_cm"]
    x = screen.x1 + max(2, int(0.015 * size))
    span = screen.y1 - screen.y0
    for cm in range(int(depth_cm) + 1):
        y = screen.y0 + int(round(cm / depth_cm * (span - 1)))
        cv2.line(img, (x, y), (x + max(2, int(0.02 * size)), y), colour, 1)
        if cm and cm % 2 == 0 and size >= 128:
            cv2.putText(img, str(cm), (x + max(3, int(0.025 * size)), y + 3), font, scale * 0.9, colour, thick, cv2.LINE_AA)
    fy = screen.y0 + int(labels["focus"] * span)
    tri = np.array([[x, fy], [x + max(3, int(0.02 * size)), fy - max(2, int(0.012 * size))], [x + max(3, int(0.02 * size)), fy + max(2, int(0.012 * size))]], np.int32)
    cv2.fillPoly(img, [tri], 230)


# --------------------------------------------------------------------------------------------- generator


@dataclass
class _ProbeMotion:
    """Slow hand motion of the probe over the video (acquisition pixels / radians) and tissue wobble."""

    slide: np.ndarray  # lateral shift per frame
    tilt: np.ndarray  # rotation per frame
    press: np.ndarray  # axial compression factor per frame
    lift: np.ndarray  # axial shift per frame
    wobble_amp: float
    wobble_len: float
    wobble_freq: float
    beams: int

    def tissue_coords(self, ti: int, tn: np.float64, xx: np.ndarray, zz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Screen pixel -> tissue coordinates (u lateral, v depth) of frame ti (at time tn; a NumPy float64, so the
        wobble is computed in float64 as the images were generated)."""
        ca, sa = math.cos(float(self.tilt[ti])), math.sin(float(self.tilt[ti]))
        xr = xx - self.beams / 2.0
        u = self.beams / 2.0 + self.slide[ti] + ca * xr - sa * zz
        v = self.lift[ti] + (sa * xr + ca * zz) * self.press[ti]
        phase = 2 * math.pi * self.wobble_freq * tn
        u = u + self.wobble_amp * np.sin(2 * math.pi * zz / self.wobble_len + phase)
        v = v + 0.6 * self.wobble_amp * np.sin(2 * math.pi * xx / self.wobble_len + phase + 1.0)
        return u.astype(np.float32), v.astype(np.float32)


def _make_probe_motion(rng: np.random.Generator, tn: np.ndarray, beams: int, depth_px: int,
                       size: int) -> _ProbeMotion:
    slide = _smooth_path(rng, tn, 0.12 * beams)
    tilt = _smooth_path(rng, tn, 0.05)
    press = 1.0 + _smooth_path(rng, tn, 0.04)
    lift = _smooth_path(rng, tn, 0.03 * depth_px)
    wobble_amp = rng.uniform(0.5, 2.0) * size / 256.0
    wobble_len = rng.uniform(0.3, 0.8) * depth_px
    wobble_freq = rng.uniform(1.0, 3.0)
    return _ProbeMotion(slide, tilt, press, lift, wobble_amp, wobble_len, wobble_freq, beams)


def _make_display(rng: np.random.Generator, depth_px: int, kr: np.ndarray, ki: np.ndarray) -> _Display:
    """The receive chain of one video: attenuation, TGC with a few gain bumps, dynamic range, grey level, noise."""
    base_atten_db = rng.uniform(18.0, 32.0)  # round-trip loss over the full depth in plain tissue
    tgc_comp = rng.uniform(0.75, 1.0)
    gain_bumps = [(rng.uniform(0.1, 0.9), rng.uniform(-2.5, 2.5), rng.uniform(0.08, 0.2)) for _ in range(3)]
    dyn_range = rng.uniform(36.0, 48.0)
    grey_level = rng.uniform(0.45, 0.6)  # where the median tissue echo sits in the displayed range
    noise_level = rng.uniform(0.01, 0.03)
    refresh = rng.uniform(0.05, 0.15)  # fraction of scatterer power replaced per frame
    gamma = rng.uniform(1.0, 1.4)
    depth_frac = np.arange(depth_px, dtype=np.float32)[:, None] / depth_px
    tgc = 10 ** ((base_atten_db * tgc_comp * depth_frac) / 20.0)
    for centre, db, width in gain_bumps:
        tgc = tgc * 10 ** (db * np.exp(-((depth_frac - centre) ** 2) / (2 * width**2)) / 20.0)
    return _Display(tgc, base_atten_db, dyn_range, grey_level, noise_level, refresh, gamma, kr, ki)


def _screen_labels(rng: np.random.Generator, sector: bool, dyn_range: float) -> dict:
    """The text a scanner prints on the image: probe, frequency, preset, gain, dynamic range, depth, focus."""
    return {
        "probe": "C5-1" if sector else "L12-5",
        "freq": int(rng.choice([3, 4, 5])) if sector else int(rng.choice([8, 10, 12])),
        "preset": str(rng.choice(["THY", "BRST", "ABD", "MSK"])),
        "gain": int(rng.integers(40, 70)),
        "dr": int(round(dyn_range)),
        "depth_cm": float(rng.choice([4.0, 5.0, 6.0])) if not sector else float(rng.choice([10.0, 12.0, 14.0])),
        "focus": float(rng.uniform(0.3, 0.7)),
    }


def make_video(
    seed: int,
    index: int = 0,
    *,
    frames: int = 30,
    size: int = 256,
    sector: bool | None = None,
    lesions: int | None = None,
    fps: float = 25.0,
    text: bool = True,
) -> SynthVideo:
    """Generate one video. `sector=None` / `lesions=None` draw them from the seed (half convex; 1-2 lesions)."""
    if frames < 1 or size < 32:
        raise ValueError(f"need frames >= 1 and size >= 32, got frames={frames} size={size}")
    rng = np.random.default_rng(video_seed(seed, index))
    if sector is None:
        sector = bool(rng.random() < 0.5)
    if lesions is None:
        lesions = 1 if rng.random() < 0.7 else 2
    screen = _make_screen(size, sector)
    depth_px, beams = screen.grid_shape
    tn = np.linspace(0.0, 1.0, frames) * (frames / 60.0)  # time in units of ~60-frame spans

    # tissue coordinates span more than the view so probe motion never reaches the edge of the scatterers
    pad = int(0.35 * beams) + 8
    noise = rng.standard_normal((depth_px + 2 * pad, beams + 2 * pad, 2)).astype(np.float32)
    layers = _make_layers(rng)
    lesion_list = _make_lesions(rng, lesions, beams, depth_px, tn)
    kr, ki = _pulse_echo_psf(size, rng)

    motion = _make_probe_motion(rng, tn, beams, depth_px, size)
    display = _make_display(rng, depth_px, kr, ki)
    labels = _screen_labels(rng, sector, display.dyn_range)
    frame_rng = np.random.default_rng(rng.integers(0, 2**63 - 1))

    out_frames = np.zeros((frames, size, size), np.uint8)
    out_masks = np.zeros((frames, size, size), np.uint8)
    zz, xx = np.mgrid[0:depth_px, 0:beams].astype(np.float32)
    for ti in range(frames):
        u, v = motion.tissue_coords(ti, tn[ti], xx, zz)
        echo, atten = _layer_maps(layers, u, v, depth_px, beams, size)
        mask = _add_lesions(lesion_list, u, v, ti, float(tn[ti]), echo, atten, size)
        img8 = _acquire(display, echo, atten, noise, u + pad, v + pad, frame_rng)

        screen_img, screen_mask = _to_screen(screen, img8, mask.astype(np.uint8))
        if text:
            _draw_overlay_text(screen_img, screen, labels, ti, fps)
        out_frames[ti] = screen_img
        out_masks[ti] = screen_mask

    info = {
        "seed": int(seed),
        "index": int(index),
        "probe": "convex" if sector else "linear",
        "lesions": [{"kind": les.kind, "echo": round(float(les.echo), 3)} for les in lesion_list],
        "labels": labels,
        "fps": fps,
    }
    return SynthVideo(out_frames, out_masks, info)


def _layer_maps(layers: list[_Layer], u: np.ndarray, v: np.ndarray, depth_px: int, beams: int,
                size: int) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity and attenuation of the tissue layers at tissue coordinates (u, v), each layer's texture and a
    bright specular interface (fascia) on its top."""
    echo = np.full((depth_px, beams), layers[0].echo, np.float32)
    atten = np.ones((depth_px, beams), np.float32)
    vf = v / depth_px
    interface_gain = np.float32(6.0)
    uf = u / beams
    for layer in layers[1:]:
        top = layer.depth + layer.wave_amp * np.sin(2 * math.pi * uf / layer.wave_len + layer.wave_phase)
        below = vf >= top
        level = np.float32(layer.echo)
        if layer.texture == "septa":
            stripes = np.sin(2 * math.pi * layer.tex_freq * (vf + 0.3 * layer.tex_angle * uf + 0.02 * np.sin(7 * uf)))
            tex = level * (1.0 + 6.0 * np.clip(stripes - 0.8, 0, None) / 0.2)
        elif layer.texture == "striated":
            stripes = np.sin(2 * math.pi * layer.tex_freq * (vf + layer.tex_angle * uf))
            tex = level * (1.0 + 0.6 * stripes)
        else:
            tex = np.full_like(vf, level)
        echo = np.where(below, tex, echo)
        atten = np.where(below, np.float32(layer.attenuation), atten)
        echo += interface_gain * np.exp(-(((vf - top) * depth_px) ** 2) / (2 * (0.9 * size / 256.0) ** 2))
    return echo, atten


def _add_lesions(lesion_list: list[_Lesion], u: np.ndarray, v: np.ndarray, ti: int, tn: float, echo: np.ndarray,
                 atten: np.ndarray, size: int) -> np.ndarray:
    """Paint the lesions into `echo` and `atten` (in place) at frame `ti`; returns their exact mask."""
    mask = np.zeros(echo.shape, bool)
    for lesion in lesion_list:
        rho, boundary = _lesion_field(lesion, u, v, ti, tn)
        inside = rho < boundary
        inner = lesion.echo * (1.0 + 0.5 * np.sin(5 * rho + 3 * np.arctan2(v - lesion.cv, u - lesion.cu)) * (lesion.kind == "solid"))
        echo[...] = np.where(inside, inner.astype(np.float32), echo)
        if lesion.rim > 0:
            ring = np.exp(-(((rho - boundary) * lesion.ax) ** 2) / (2 * (1.2 * size / 256.0) ** 2)) * (rho >= boundary)
            echo += (lesion.rim * ring).astype(np.float32)
        atten[...] = np.where(inside, atten * np.float32(lesion.attenuation_factor), atten)
        mask |= inside
    return mask


@dataclass
class _Display:
    """The scanner's receive chain and display settings of one video."""

    tgc: np.ndarray  # time-gain compensation per depth row
    base_atten_db: float
    dyn_range: float
    grey_level: float
    noise_level: float
    refresh: float  # fraction of scatterer power replaced per frame
    gamma: float
    kr: np.ndarray  # pulse-echo PSF, real and imaginary parts
    ki: np.ndarray


def _acquire(d: _Display, echo: np.ndarray, atten: np.ndarray, noise: np.ndarray, u: np.ndarray, v: np.ndarray,
             frame_rng: np.random.Generator) -> np.ndarray:
    """One B-mode frame (uint8) of the tissue maps: scatterers fixed in tissue (+ a refreshed part) weighted by
    echogenicity, round-trip attenuation along each beam, receiver noise before the (band-limiting) pulse-echo
    filter and TGC after it, envelope, log compression around the median tissue level."""
    nr, ni = _sample_noise(noise, u, v)
    fresh = frame_rng.standard_normal((2, *echo.shape)).astype(np.float32)
    keep = math.sqrt(1.0 - d.refresh)
    amp = np.sqrt(np.clip(echo, 0.0, None))
    loss_db = np.cumsum(atten, axis=0) * (d.base_atten_db / echo.shape[0])
    gain = (10 ** (-loss_db / 20.0)).astype(np.float32)
    rx = frame_rng.standard_normal((2, *echo.shape)).astype(np.float32) * d.noise_level
    scat_r = amp * (keep * nr + math.sqrt(d.refresh) * fresh[0]) * gain + rx[0]
    scat_i = amp * (keep * ni + math.sqrt(d.refresh) * fresh[1]) * gain + rx[1]
    re, im = _convolve_complex(scat_r, scat_i, d.kr, d.ki)
    env = np.sqrt(re * re + im * im) * d.tgc
    db = 20.0 * np.log10(env + 1e-6)
    white = float(np.median(db)) + d.grey_level * d.dyn_range
    img = np.clip((db - (white - d.dyn_range)) / d.dyn_range, 0.0, 1.0) ** d.gamma
    return (img * 255.0 + 0.5).astype(np.uint8)
