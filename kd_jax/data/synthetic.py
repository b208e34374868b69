"""Synthetic action videos: a seeded, deterministic knowledge-distillation testbed.

Every class is a combination of three attributes, each seen best by one compressed-domain stream:

* **motion** (path, direction, speed) -> motion vectors;
* **appearance** (hue, surface pattern) -> I-frames;
* **texture change** (static, flicker, hue cycling, sparkle) -> residuals.

Classes ``2k`` and ``2k+1`` share their motion pattern and classes ``2k-1`` and ``2k`` share their
appearance, and the texture change repeats every three classes, so each stream on its own confuses some
class pairs. The pairs are not identical, only close (a 25 % speed step, a small hue step), with
per-clip jitter that overlaps a little: a high-capacity model can separate them, a small one
struggles. Nuisances (random shape, size, start, background, camera pan, sensor noise, an optional
distractor object) and a small rate of label noise keep every model below 100 %.

The scene lives on a torus: an object that leaves one side re-enters on the other, so a clip's motion
direction never flips mid-clip.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math

import numpy as np

PATHS = ("linear", "circle", "zigzag")
PATTERNS = ("solid", "stripes", "checker")
DYNAMICS = ("static", "flicker", "huecycle", "sparkle")
SHAPES = ("disk", "square", "diamond")
_HUES = (0.0, 0.33, 0.66, 0.16, 0.5, 0.83)
_HUE_NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta")
_COMPASS = ("e", "se", "s", "sw", "w", "nw", "n", "ne")  # image coordinates: +y points down

# (path, direction in units of 45 degrees (circle: +1 = clockwise), speed level). Ordered so that the
# first classes are the most distinct.
_MOTIONS = (
    ("linear", 0, 1.0), ("linear", 4, 1.0), ("linear", 2, 1.0), ("linear", 6, 1.0),
    ("circle", 1, 1.0), ("circle", -1, 1.0), ("zigzag", 0, 1.0), ("zigzag", 2, 1.0),
    ("linear", 1, 0.5), ("linear", 5, 0.5), ("linear", 3, 0.5), ("linear", 7, 0.5),
    ("zigzag", 4, 0.5), ("zigzag", 6, 0.5), ("circle", 1, 0.5), ("circle", -1, 0.5),
)
_SPLIT_CODES = {"train": 0, "test": 1, "validation": 2}


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Size and difficulty of a synthetic action dataset.

  Attributes:
    num_classes: number of action classes (any value >= 2; attributes repeat beyond 32).
    num_frames: frames per clip.
    height: frame height in pixels.
    width: frame width in pixels.
    label_noise: probability that a clip is rendered from another class's attributes (its label is
      kept), so that no model can reach 100 %.
    noise_std: standard deviation of the per-pixel sensor noise, in 0-255 units.
    distractor_prob: probability of a second, smaller object with random attributes.
    max_pan: largest camera pan speed, in pixels per frame.
  """

  num_classes: int = 12
  num_frames: int = 48
  height: int = 96
  width: int = 128
  label_noise: float = 0.03
  noise_std: float = 3.0
  distractor_prob: float = 0.5
  max_pan: float = 0.4

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
    if self.num_frames < 2 or self.height < 16 or self.width < 16:
      raise ValueError(
          f"clips need >= 2 frames of >= 16x16 pixels, got {self.num_frames} frames of "
          f"{self.height}x{self.width}")
    if not 0.0 <= self.label_noise < 1.0:
      raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")


@dataclasses.dataclass(frozen=True)
class ClassAttributes:
  """What a class looks like; see the module docstring for the pairing scheme."""

  path: str
  direction: int  # multiples of 45 degrees for linear/zigzag; +1/-1 = clockwise/anticlockwise
  speed: float  # multiplier of the base speed (min(H, W) / 48 pixels per frame)
  hue: float
  pattern: str
  dynamics: str

  @property
  def name(self) -> str:
    if self.path == "circle":
      where = "cw" if self.direction > 0 else "ccw"
    else:
      where = _COMPASS[self.direction % 8]
    hue_name = _HUE_NAMES[int(np.argmin([abs(self.hue - h) for h in _HUES]))]
    return f"{self.path}-{where}-x{self.speed:g}_{hue_name}-{self.pattern}_{self.dynamics}"


def class_attributes(label: int) -> ClassAttributes:
  """Returns the attributes of class ``label`` (the same for every dataset size)."""
  if label < 0:
    raise ValueError(f"label must be >= 0, got {label}")
  path, direction, speed = _MOTIONS[(label // 2) % len(_MOTIONS)]
  # The odd member of a motion pair is 25 % faster: close enough that per-clip jitter overlaps.
  speed *= 1.0 + 0.25 * (label % 2)
  appearance = ((label + 1) // 2) % 18
  hue = _HUES[appearance % 6] + 0.06 * (label % 2)  # the odd member of an appearance pair
  pattern = PATTERNS[(appearance // 6 + appearance) % 3]
  dynamics = DYNAMICS[(label // 3) % len(DYNAMICS)]
  return ClassAttributes(path, direction, speed, hue % 1.0, pattern, dynamics)


def class_names(num_classes: int) -> list[str]:
  """Unique, readable class names, e.g. ``'003_linear-s-x1.25_green-stripes_flicker'``."""
  return [f"{i:03d}_{class_attributes(i).name}" for i in range(num_classes)]


def clip_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
  """The generator of one clip; independent of every other clip, so clips can be made in any order."""
  return np.random.default_rng([seed, _SPLIT_CODES.get(split, 3), label, index])


def generate_clip(label: int, index: int, *, spec: SyntheticSpec, split: str = "train",
                  seed: int = 0) -> np.ndarray:
  """Renders clip ``index`` of class ``label``.

  Args:
    label: class index in ``[0, spec.num_classes)``.
    index: clip number within the class and split.
    spec: dataset size and difficulty.
    split: split name; different splits give different clips.
    seed: dataset seed.

  Returns:
    uint8 array of shape ``[spec.num_frames, spec.height, spec.width, 3]`` (RGB).
  """
  if not 0 <= label < spec.num_classes:
    raise ValueError(f"label {label} is outside [0, {spec.num_classes})")
  rng = clip_rng(seed, split, label, index)
  shown = label
  if rng.random() < spec.label_noise:
    shown = (label + rng.integers(1, spec.num_classes)) % spec.num_classes
  return _render(class_attributes(shown), spec, rng)


def _render(attrs: ClassAttributes, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
  h, w, t_len = spec.height, spec.width, spec.num_frames
  size = min(h, w)
  background, pan = _background(spec, rng)
  main = _object(attrs, size, rng, jitter=True)
  objects = [main]
  if rng.random() < spec.distractor_prob:
    other = class_attributes(int(rng.integers(0, 32)))
    other = dataclasses.replace(other, dynamics="static", pattern="solid")
    objects.insert(0, _object(other, size, rng, jitter=True, scale=0.6))
  frames = np.empty((t_len, h, w, 3), np.float32)
  for t in range(t_len):
    ox, oy = pan * t
    frames[t] = _shift(background, ox, oy, h, w)
    for obj in objects:
      _paint(frames[t], obj, t, rng)
  frames += spec.noise_std * rng.standard_normal(frames.shape, dtype=np.float32)
  return np.clip(frames, 0, 255).astype(np.uint8)


def _background(spec: SyntheticSpec, rng: np.random.Generator):
  """A smooth, desaturated random texture larger than the frame, and a camera pan velocity."""
  margin = int(math.ceil(spec.max_pan * spec.num_frames)) + 2
  h, w = spec.height + margin, spec.width + margin
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  base = rng.uniform(70, 170)
  img = np.full((h, w, 3), base, np.float32)
  for _ in range(4):
    fx, fy = rng.uniform(-1, 1, 2) * 2 * math.pi / rng.uniform(12, 48)
    amp = rng.uniform(8, 25)
    tint = 1.0 + rng.uniform(-0.25, 0.25, 3)
    img += amp * np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * math.pi))[..., None] * tint
  angle = rng.uniform(0, 2 * math.pi)
  pan = rng.uniform(0, spec.max_pan) * np.array([math.cos(angle), math.sin(angle)])
  # Start so that the pan never leaves the texture.
  start = np.where(pan < 0, margin - 1, 0)
  return (img, start), pan


def _shift(background, ox: float, oy: float, h: int, w: int) -> np.ndarray:
  img, start = background
  x0, y0 = int(round(start[0] + ox)), int(round(start[1] + oy))
  return img[y0:y0 + h, x0:x0 + w]


def _object(attrs: ClassAttributes, size: int, rng: np.random.Generator, *, jitter: bool,
            scale: float = 1.0) -> dict:
  """Samples the per-clip parameters of one object of the given class."""
  j = (lambda lo, hi: rng.uniform(lo, hi)) if jitter else (lambda lo, hi: 0.5 * (lo + hi))
  base_speed = size / 48.0
  speed = attrs.speed * base_speed * j(0.85, 1.15)
  angle = attrs.direction * math.pi / 4 + j(-0.25, 0.25)
  return dict(
      attrs=attrs,
      shape=SHAPES[int(rng.integers(len(SHAPES)))],
      radius=size * scale * j(0.13, 0.19),
      start=rng.uniform(0, 1, 2),
      speed=speed,
      angle=angle,
      orbit=size * j(0.18, 0.28),
      phase=rng.uniform(0, 2 * math.pi),
      zig_period=j(10, 14),
      hue=(attrs.hue + j(-0.025, 0.025)) % 1.0,
      value=j(0.65, 0.85),
      pattern_angle=rng.uniform(0, math.pi),
      pattern_period=size * j(0.07, 0.1),
      dyn_period=j(5, 9),
      dyn_phase=rng.uniform(0, 2 * math.pi),
  )


def _position(obj: dict, t: int, h: int, w: int) -> tuple[float, float]:
  attrs = obj["attrs"]
  x, y = obj["start"][0] * w, obj["start"][1] * h
  c, s = math.cos(obj["angle"]), math.sin(obj["angle"])
  if attrs.path == "linear":
    return x + obj["speed"] * t * c, y + obj["speed"] * t * s
  if attrs.path == "circle":
    # The angular speed keeps the path speed equal to a linear mover's.
    theta = obj["phase"] + attrs.direction * obj["speed"] * t / obj["orbit"]
    return x + obj["orbit"] * math.cos(theta), y + obj["orbit"] * math.sin(theta)
  # zigzag: forward at 80 % speed, plus a triangle wave across the direction of travel.
  along = 0.8 * obj["speed"] * t
  period = obj["zig_period"]
  tri = 4.0 * abs((t / period + 0.25) % 1.0 - 0.5) - 1.0
  across = tri * 0.1 * obj["orbit"] * 4.0
  return x + along * c - across * s, y + along * s + across * c


def _paint(img: np.ndarray, obj: dict, t: int, rng: np.random.Generator) -> None:
  """Alpha-blends the object at frame ``t`` into ``img`` (float32, modified in place)."""
  h, w = img.shape[:2]
  attrs = obj["attrs"]
  cx, cy = _position(obj, t, h, w)
  r = obj["radius"]
  # Only a window around the object is computed; indices modulo the frame size wrap it on the torus.
  xs = np.arange(math.floor(cx - r - 1), math.ceil(cx + r + 2))
  ys = np.arange(math.floor(cy - r - 1), math.ceil(cy + r + 2))
  u = (xs - cx).astype(np.float32)[None, :]
  v = (ys - cy).astype(np.float32)[:, None]
  if obj["shape"] == "disk":
    dist = np.sqrt(u * u + v * v)
  elif obj["shape"] == "square":
    dist = np.maximum(abs(u), abs(v))
  else:
    dist = (abs(u) + abs(v)) / math.sqrt(2)
  alpha = np.clip(r - dist + 0.5, 0.0, 1.0)
  # The surface pattern is fixed to the object, so motion compensation can follow it.
  pa = obj["pattern_angle"]
  q = (u * math.cos(pa) + v * math.sin(pa)) / obj["pattern_period"]
  if attrs.pattern == "stripes":
    pattern = (np.sin(2 * math.pi * q) > 0).astype(np.float32)
  elif attrs.pattern == "checker":
    q2 = (-u * math.sin(pa) + v * math.cos(pa)) / obj["pattern_period"]
    pattern = ((np.sin(2 * math.pi * q) * np.sin(2 * math.pi * q2)) > 0).astype(np.float32)
  else:
    pattern = np.ones_like(alpha)
  hue, value = obj["hue"], obj["value"]
  wave = math.sin(2 * math.pi * t / obj["dyn_period"] + obj["dyn_phase"])
  if attrs.dynamics == "flicker":
    value *= 1.0 + 0.3 * wave
  elif attrs.dynamics == "huecycle":
    hue = (hue + 0.1 * wave) % 1.0
  rgb = 255.0 * np.array(colorsys.hsv_to_rgb(hue, 0.85, min(value, 1.0)), np.float32)
  shade = (0.55 + 0.45 * pattern)[..., None] * rgb
  if attrs.dynamics == "sparkle":
    # Fresh speckle every frame: no motion vector can predict it, only the residual carries it.
    speckle = rng.standard_normal(alpha.shape, dtype=np.float32)
    shade = shade * (1.0 + 0.5 * speckle)[..., None]
  window = np.ix_(ys % h, xs % w)
  a = alpha[..., None]
  img[window] = img[window] * (1.0 - a) + a * shade
