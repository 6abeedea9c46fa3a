"""Data: a small synthetic detection dataset the project generates itself, and where the shared datasets are."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import yaml

SHAPES = ("circle", "square", "triangle")
CLASS_COLORS = ((60, 60, 230), (60, 200, 60), (230, 120, 40))  # BGR: red circles, green squares, blue triangles

SHARED_ENV = "YOLO_TOOD_SHARED"


def shared_datasets(repo_root: str | Path) -> Path:
    """Return the folder of the shared datasets (coco128, bccd, ...), which may not exist on this machine.

    It is ``$YOLO_TOOD_SHARED/datasets``, with ``YOLO_TOOD_SHARED`` defaulting to ``../shared``; a relative value is
    taken relative to the repository root. Tests skip and scripts stop with a clear line when it is absent.

    Args:
        repo_root (str | Path): The checkout's root, found by the caller from its own file (``tests/``, ``scripts/``)
            because an installed ``yolo_tood`` lives in site-packages, not in the checkout.

    Examples:
        >>> (shared_datasets(Path(__file__).parents[1]) / "coco128" / "coco128.yaml").name
        'coco128.yaml'
    """
    return (Path(repo_root).resolve() / os.environ.get(SHARED_ENV, "../shared")).resolve() / "datasets"


def _draw(img: np.ndarray, shape: str, cx: int, cy: int, r: int, color: tuple[int, int, int]) -> None:
    if shape == "circle":
        cv2.circle(img, (cx, cy), r, color, -1)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], color)


def _place_shape(
    rng: np.random.Generator, boxes: list[tuple[int, int, int]], r: int, imgsz: int
) -> tuple[int, int] | None:
    """Return a centre for a shape of half-side ``r`` that overlaps none of ``boxes``, or None after 20 tries.

    Shapes do not overlap, so no label is hidden behind another shape.

    Args:
        rng (np.random.Generator): Random generator of the dataset.
        boxes (list[tuple[int, int, int]]): ``(cx, cy, r)`` of the shapes already placed on the image.
        r (int): Half-side (radius) of the new shape, in pixels.
        imgsz (int): Image side in pixels.
    """
    for _ in range(20):
        cx, cy = (int(v) for v in rng.integers(r, imgsz - r, 2))
        if all(abs(cx - x) > r + s + 1 or abs(cy - y) > r + s + 1 for x, y, s in boxes):
            return cx, cy
    return None


def _shape_color(rng: np.random.Generator, cls: int, class_colors: bool) -> tuple[int, ...]:
    """Return a BGR colour: the class's own ``CLASS_COLORS`` entry +-25 if ``class_colors``, else a random one."""
    if class_colors:
        return tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in CLASS_COLORS[cls])
    return tuple(int(c) for c in rng.integers(120, 256, 3))


def _shapes_image(
    rng: np.random.Generator, imgsz: int, size: tuple[float, float], max_objects: int, class_colors: bool
) -> tuple[np.ndarray, list[str]]:
    """Draw one noisy image with 1 to ``max_objects`` non-overlapping shapes.

    Args:
        rng (np.random.Generator): Random generator of the dataset (consumed in a fixed order, for reproducibility).
        imgsz (int): Image side in pixels.
        size (tuple[float, float]): Range of a shape's half-side, as fractions of ``imgsz``.
        max_objects (int): At most this many shapes.
        class_colors (bool): Draw each class in its own colour (see ``_shape_color``).

    Returns:
        (tuple[np.ndarray, list[str]]): The BGR image and its YOLO label lines (``cls cx cy w h``, normalised).
    """
    img = rng.integers(0, 90, (imgsz, imgsz, 3), dtype=np.uint8)
    lines, boxes = [], []
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = int(rng.integers(len(SHAPES)))
        r = int(rng.integers(max(int(imgsz * size[0]), 2), max(int(imgsz * size[1]), 3)))
        centre = _place_shape(rng, boxes, r, imgsz)
        if centre is None:  # no free spot: the image gets one shape fewer
            continue
        cx, cy = centre
        boxes.append((cx, cy, r))
        _draw(img, SHAPES[cls], cx, cy, r, _shape_color(rng, cls, class_colors))
        lines.append(f"{cls} {cx / imgsz:.6f} {cy / imgsz:.6f} {2 * r / imgsz:.6f} {2 * r / imgsz:.6f}")
    return img, lines


def make_shapes_dataset(
    root: str | Path,
    train: int = 96,
    val: int = 24,
    imgsz: int = 160,
    seed: int = 0,
    size: tuple[float, float] = (1 / 16, 1 / 5),
    max_objects: int = 4,
    class_colors: bool = False,
) -> Path:
    """Write a YOLO-format dataset of filled circles, squares and triangles on noisy backgrounds.

    Args:
        root (str | Path): Output directory; ``images/{train,val}``, ``labels/{train,val}`` and ``shapes.yaml``
            are written under it (existing files are overwritten).
        train (int): Number of training images.
        val (int): Number of validation images.
        imgsz (int): Image side in pixels.
        seed (int): Random seed; the same seed gives the same dataset.
        size (tuple[float, float]): Range of a shape's half-side (radius), as fractions of ``imgsz``.
        max_objects (int): At most this many shapes per image (at least 1).
        class_colors (bool): Draw each class in its own colour (``CLASS_COLORS``, +-25 jitter) instead of a random
            one, so the class is visible in colour as well as in shape: an easier task, learned in fewer epochs.

    Returns:
        (Path): Path of the data YAML, to pass as ``data=`` to ultralytics.

    Examples:
        >>> data = make_shapes_dataset("/tmp/shapes", train=8, val=4)
        >>> data.name
        'shapes.yaml'
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, lines = _shapes_image(rng, imgsz, size, max_objects, class_colors)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.jpg"), img)
            (root / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val", "names": dict(enumerate(SHAPES))}
    yaml_path = root / "shapes.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path
