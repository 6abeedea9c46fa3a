"""Pictures of task alignment (TOOD, Feng et al., ICCV 2021): score against IoU, their distributions, and T-Head maps.

- ``plot_score_iou``: the classification score of each object's 50 most confident predictions against their IoU with
  the object, as a 2-D histogram per model, with the PCC top-50 in the title. An aligned detector puts its high scores
  on its high IoUs (mass along the rising diagonal); a misaligned one scores badly placed boxes high.
- ``plot_distributions``: histograms of the score, the IoU and the alignment metric t = s^alpha * u^beta over the same
  predictions, models overlaid.
- ``plot_head_maps``: for one image, what the TOOD head computes per level: the probability map M (TAP's
  classification alignment), the aligned score, the per-side sampling offsets of the box prediction (TAP's
  localisation alignment) and the layer attention of the two task decompositions. Read through forward hooks on the
  head's sub-modules; the head's forward is unchanged.

The (score, IoU) pairs are collected by ``yolo_tood.tools.analysis.alignment.AlignmentAccumulator`` during the same
pass that computes ``pcc_top50`` (``AlignmentResult.score_iou``), so a plot and the number in its title come from the
same data.

Examples:
    >>> from yolo_tood.tools.analysis import evaluate_alignment
    >>> results = {"tood": evaluate_alignment("best.pt", "data.yaml", imgsz=320)}
    >>> plot_score_iou(results, "score_iou.png")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...train.hyp import TOODHyp

__all__ = ("alignment_metric", "head_maps", "map_range", "plot_distributions", "plot_head_maps", "plot_score_iou")

SIDES = ("left", "top", "right", "bottom")  # order of the box sides (ultralytics' ltrb distances, TAP's offset groups)
SIDE_COLORS = ("tab:red", "tab:green", "tab:blue", "tab:orange")


def _plt():
    """Return pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def alignment_metric(
    score: np.ndarray, iou: np.ndarray, alpha: float = TOODHyp.tal_alpha, beta: float = TOODHyp.tal_beta
) -> np.ndarray:
    """Return TAL's alignment metric t = s^alpha * u^beta (TOOD eq. 3)."""
    return np.power(score, alpha) * np.power(iou, beta)


def _pairs(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (score, IoU) arrays of an AlignmentResult's ``score_iou``."""
    if result.score_iou is None:
        raise ValueError("the AlignmentResult has no score_iou pairs (results read back from JSON do not keep them)")
    a = result.score_iou.detach().cpu().double().numpy().reshape(-1, 2)
    return a[:, 0], a[:, 1]


def plot_score_iou(results: Mapping[str, Any], path: str | Path, bins: int = 40) -> dict[str, dict[str, Any]]:
    """Plot classification score against IoU of each object's top-50 predictions, one 2-D histogram per model.

    Args:
        results (Mapping[str, AlignmentResult]): Results with ``score_iou``, keyed by model name.
        path (str | Path): Output PNG.
        bins (int): Histogram bins per axis over [0, 1].

    Returns:
        (dict[str, dict]): Per model, ``iou`` and ``score`` (the plotted points), ``hist`` (bins x bins counts, IoU
            along the first axis) and ``pcc`` (the title's PCC top-50).
    """
    plt = _plt()
    from matplotlib.colors import LogNorm

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 0.6, 4.4), dpi=120, squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    data = {}
    for ax, (name, r) in zip(axes[0], results.items()):
        score, iou = _pairs(r)
        hist, _, _ = np.histogram2d(iou, score, bins=(edges, edges))
        data[name] = {"iou": iou, "score": score, "hist": hist, "pcc": r.pcc_top50}
        if hist.sum():
            im = ax.pcolormesh(edges, edges, hist.T, norm=LogNorm(vmin=1, vmax=hist.max()), cmap="viridis")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="predictions")
        ax.plot([0, 1], [0, 1], "--", color="0.45", lw=0.8)  # white vanished on the light grey empty background
        pcc = "-" if r.pcc_top50 is None or math.isnan(r.pcc_top50) else f"{r.pcc_top50:.3f}"
        ax.set_title(f"{name}\nPCC top-50 = {pcc} ({r.num_objects} objects)", fontsize=10)
        ax.set_xlabel("IoU with the object")
        ax.set_ylabel("classification score (object's class)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_facecolor("0.93")
    fig.suptitle("Score vs IoU of each object's 50 most confident predictions", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return data


def plot_distributions(
    results: Mapping[str, Any],
    path: str | Path,
    alpha: float = TOODHyp.tal_alpha,
    beta: float = TOODHyp.tal_beta,
    bins: int = 50,
) -> dict[str, dict[str, np.ndarray]]:
    """Plot histograms of score, IoU and t = s^alpha * u^beta of each object's top-50 predictions, models overlaid.

    Args:
        results (Mapping[str, AlignmentResult]): Results with ``score_iou``, keyed by model name.
        path (str | Path): Output PNG.
        alpha (float): Score exponent of t.
        beta (float): IoU exponent of t.
        bins (int): Bins over [0, 1].

    Returns:
        (dict[str, dict]): Per model, ``score``, ``iou`` and ``t`` (the plotted values) and their histograms
            ``hist/score``, ``hist/iou``, ``hist/t`` (fractions of the model's predictions per bin).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=120)
    edges = np.linspace(0, 1, bins + 1)
    labels = {"score": "classification score s", "iou": "IoU u", "t": f"alignment t = s^{alpha:g} * u^{beta:g}"}
    data = {}
    for name, r in results.items():
        score, iou = _pairs(r)
        d = {"score": score, "iou": iou, "t": alignment_metric(score, iou, alpha, beta)}
        for ax, key in zip(axes, labels):
            weights = np.full(len(d[key]), 1 / max(len(d[key]), 1))
            d[f"hist/{key}"], _, _ = ax.hist(d[key], bins=edges, weights=weights, histtype="step", lw=1.5, label=name)
        data[name] = d
    for ax, (key, label) in zip(axes, labels.items()):
        ax.set_xlabel(label)
        ax.set_ylabel("share of predictions")
        ax.grid(alpha=0.3)
        if key == "t":
            ax.set_yscale("log")  # beta = 6 piles t near 0; the log shows the tail of well-aligned predictions
            ax.set_ylim(top=min(ax.get_ylim()[1], 1.5))  # a share is <= 1; one full bin made the log axis run to 10
    axes[0].legend()
    fig.suptitle("Each object's 50 most confident predictions", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return data


@torch.no_grad()
def head_maps(model: torch.nn.Module, img: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Run ``model`` on one image and return the TOOD head's intermediate maps per level, read by forward hooks.

    Args:
        model (torch.nn.Module): A DetectionModel whose last module is ``TOODDetect`` or ``TAPDetect``.
        img (torch.Tensor): (1, 3, H, W) input in [0, 1].

    Returns:
        (dict[str, list[torch.Tensor]]): One entry per level, each for image 0:
            ``prob`` (H_l, W_l) sigmoid(M), the probability map; ``score`` (H_l, W_l) the aligned score of the best
            class, sqrt(sigmoid(cls) * sigmoid(M)); ``offsets`` (4, 2, H_l, W_l) TAP's (dy, dx) per box side in
            feature-map pixels; ``cls_attention`` and ``reg_attention`` (S,) layer-attention weights (empty for
            TAPDetect, which has none); ``stride`` ().
    """
    from ...nn.head import inference_score

    head = model.model[-1]
    if not hasattr(head, "map_modules"):
        raise ValueError(f"head maps need a TOODDetect or TAPDetect head, got {type(head).__name__}")
    hooked = head.map_modules()  # once per level in level order, or once for all levels (map_modules)
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in hooked}
    handles = [
        # image 0's output; a module run once for all levels (the T-Head's layer attention: (L, S, 1, 1)) gives L
        m.register_forward_hook(lambda _m, _i, o, k=k: outs[k].extend(o.float().unbind(0)))
        for k, modules in hooked.items()
        for m in modules
    ]
    try:
        model.eval()(img)
    finally:
        for h in handles:
            h.remove()
    if len(outs["quality"]) == 1 < len(outs["cls"]):  # DGQP runs once over the flattened levels: (1, A) -> levels
        sizes = [c.shape[-2:] for c in outs["cls"]]
        flat = outs["quality"][0].split([h * w for h, w in sizes], -1)
        outs["quality"] = [q.view(1, *hw) for q, hw in zip(flat, sizes)]
    # M's logit per level: the features' (cls_prob) plus the distribution's (dgqp), whichever the head has
    prob = [sum(parts) for parts in zip(*(outs[k] for k in ("prob", "quality") if outs[k]))]
    return {
        "prob": [p[0].sigmoid() for p in prob],
        "score": [inference_score(c, p).amax(0) for c, p in zip(outs["cls"], prob)],
        "offsets": [o.view(4, 2, *o.shape[-2:]) for o in outs["offsets"]]
        or [c.new_zeros(4, 2, *c.shape[-2:]) for c in outs["cls"]],
        "cls_attention": [a.view(-1).sigmoid() for a in outs["cls_attention"]],
        "reg_attention": [a.view(-1).sigmoid() for a in outs["reg_attention"]],
        "stride": [s for s in head.stride.float()],
    }


def _level_name(maps: dict, lvl: int) -> tuple[str, float]:
    """The level's name (``P3``) and stride."""
    stride = float(maps["stride"][lvl])
    return f"P{round(math.log2(stride))}", stride


def map_range(m: np.ndarray, min_span: float = 0.01) -> tuple[float, float]:
    """Return a map's colour range: its own [min, max] (an early model's values sit near 0.01), at least ``min_span``
    of its largest value wide.

    Without the floor an untrained head's nearly flat map (0.01001 +- 1e-9) would colour float noise as structure,
    and the colour bar would need an offset text ("1e-7+1.001e-2") to label its ticks.

    Examples:
        >>> map_range(np.array([0.5, 0.7]))
        (0.5, 0.7)
        >>> map_range(np.array([0.0100, 0.0100]))  # a flat map: a 1 % band around it
        (0.00995, 0.01005)
    """
    lo, hi = float(m.min()), float(m.max())
    pad = max(min_span * max(abs(lo), abs(hi), 1e-6) - (hi - lo), 0.0) / 2
    return lo - pad, hi + pad


def _draw_level_maps(fig: Any, axes: Any, rgb: np.ndarray, maps: dict, lvl: int) -> None:
    """Draw sigmoid(M) and the best class's aligned score of one level over the image (two axes)."""
    from matplotlib.ticker import FormatStrFormatter

    name, stride = _level_name(maps, lvl)
    h, w = rgb.shape[:2]
    for ax, (key, title) in zip(axes, (("prob", "probability map sigmoid(M)"), ("score", "aligned score"))):
        ax.imshow(rgb)
        m = maps[key][lvl].cpu().numpy()
        vmin, vmax = map_range(m)
        im = ax.imshow(m, extent=(0, w, h, 0), alpha=0.6, cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_title(f"{name} (stride {stride:g}): {title}", fontsize=8)
        # plain tick labels: 4 significant digits resolve the 1 % minimum range, with no offset text over the title
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, format=FormatStrFormatter("%.4g")).ax.tick_params(labelsize=7)


def _draw_offsets(ax: Any, rgb: np.ndarray, maps: dict, lvl: int, arrows: int) -> torch.Tensor:
    """Draw the TAP offsets of the ``arrows`` best-scoring anchors of one level; return their (y, x) cells (k, 2)."""
    name, stride = _level_name(maps, lvl)
    h, w = rgb.shape[:2]
    ax.imshow(rgb)
    score = maps["score"][lvl]
    top = score.flatten().topk(min(arrows, score.numel())).indices
    cells = torch.stack((top // score.shape[1], top % score.shape[1]), 1).cpu()  # (k, 2) y, x
    off = maps["offsets"][lvl].cpu()  # (4, 2, H_l, W_l)
    for y, x in cells.tolist():
        cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
        for side in range(4):
            dy, dx = (off[side, :, y, x] * stride).tolist()
            ax.annotate(
                "", (cx + dx, cy + dy), (cx, cy), arrowprops=dict(arrowstyle="->", color=SIDE_COLORS[side], lw=1)
            )
        ax.plot(cx, cy, "w.", ms=3)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(f"{name}: TAP offsets of the top-{len(cells)} anchors", fontsize=8)
    return cells


def _draw_layer_attention(ax: Any, maps: dict) -> None:
    """Bar chart of both decompositions' layer-attention weights per level (TAPDetect: a note, it has none)."""
    if not maps["cls_attention"]:  # TAPDetect: the stock branches have no task decomposition
        ax.text(0.5, 0.5, "no layer attention\n(stock branches + TAP)", ha="center", va="center", fontsize=8)
        ax.axis("off")
        return
    nl, s = len(maps["cls_attention"]), len(maps["cls_attention"][0])
    width = 0.8 / (2 * nl)
    for lvl in range(nl):
        for t, (task, hatch) in enumerate((("cls", ""), ("reg", "//"))):
            pos = np.arange(s) + (2 * lvl + t) * width - 0.4 + width / 2
            weights = maps[f"{task}_attention"][lvl].cpu().numpy()
            label = f"{_level_name(maps, lvl)[0]} {task}"
            ax.bar(pos, weights, width, color=f"C{lvl}", hatch=hatch, edgecolor="k", lw=0.3, label=label)
    ax.set_xticks(range(s), [f"layer {i + 1}" for i in range(s)])
    ax.set_ylim(0, 1)
    ax.set_title("layer attention (task decomposition)", fontsize=8)
    ax.legend(fontsize=6, ncol=2)


def letterbox_image(path: str | Path, imgsz: int, stride: int = 32) -> tuple[np.ndarray, torch.Tensor]:
    """Load an image and letterbox it as ultralytics' predictor; return (RGB uint8 H x W x 3, (1, 3, H, W) tensor)."""
    import cv2
    from ultralytics.data.augment import LetterBox

    bgr = cv2.imread(str(path))
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    rgb = np.ascontiguousarray(LetterBox((imgsz, imgsz), auto=False, stride=stride)(image=bgr)[..., ::-1])
    return rgb, torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


def plot_head_maps(
    model: torch.nn.Module, image: str | Path, path: str | Path, imgsz: int = 640, arrows: int = 12
) -> dict[str, Any]:
    """Draw, over one image, the TOOD head's probability map, score, TAP offsets and layer attention per level.

    Rows: sigmoid(M); the best class's aligned score; the four per-side sampling offsets (arrows from the anchor centre
    to the sampled point, in image pixels) of the ``arrows`` highest-scoring anchors of the level. Last column: the
    image and the layer-attention weights of the classification and regression decompositions per level.

    Args:
        model (torch.nn.Module): A DetectionModel with a ``TOODDetect`` or ``TAPDetect`` head.
        image (str | Path): Image file.
        path (str | Path): Output PNG.
        imgsz (int): Letterboxed input size.
        arrows (int): Anchors per level whose offsets are drawn.

    Returns:
        (dict): ``maps`` (as ``head_maps``) and ``anchors``: per level, the (y, x) cells whose offsets are drawn.
    """
    plt = _plt()
    model = model.float()
    rgb, img = letterbox_image(image, imgsz, int(max(model.stride)))
    maps = head_maps(model, img.to(next(model.parameters()).device))
    nl = len(maps["prob"])
    fig, axes = plt.subplots(3, nl + 1, figsize=(3.4 * (nl + 1), 10), dpi=110, squeeze=False)
    anchors = []
    for lvl in range(nl):
        _draw_level_maps(fig, axes[:2, lvl], rgb, maps, lvl)
        anchors.append(_draw_offsets(axes[2, lvl], rgb, maps, lvl, arrows))
    for ax in axes[:, :nl].flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, nl].imshow(rgb)
    axes[0, nl].set_title(Path(image).name, fontsize=8)
    axes[0, nl].axis("off")
    _draw_layer_attention(axes[1, nl], maps)
    ax = axes[2, nl]
    for name, color in zip(SIDES, SIDE_COLORS):
        ax.plot([], [], color=color, label=f"{name} side offset")
    ax.legend(loc="center", fontsize=8, title="TAP arrows: anchor -> sampled point", title_fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {"maps": maps, "anchors": anchors}
