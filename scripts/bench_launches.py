"""Kernel launches and host syncs of stock YOLO and its TOOD heads, counted on the CPU: a proxy for their GPU cost.

A yolov8n-size model on a GPU is bound by kernel launches and host syncs, not by arithmetic (docs/head.md, "Cost on a
GPU"), and both are deterministic functions of the code: they can be counted on any machine, and a test can hold them.
Every aten op that reaches the dispatcher is recorded under a ``TorchDispatchMode``; the counting rule
(``FREE_OPS``, ``SYNC_OPS``, ``is_sync``) lives here and nowhere else:

- **launch**: every aten op except those that only make views, read metadata or wrap a Python scalar on the host
  (``FREE_OPS``); an op that synchronises counts as a launch too (it is a device-to-host copy).
- **host sync**: an op that makes the host wait for the device: ``.item()`` / ``int()`` / ``bool()`` of a tensor
  (``_local_scalar_dense``), ``nonzero``, ``masked_select``, ``unique``, an output size read from data
  (``repeat_interleave`` without ``output_size``, ``bincount``), boolean-mask indexing ``x[mask]`` and
  ``x[mask] = v`` (``index`` / ``index_put_`` with a boolean index: a ``nonzero`` inside), and ``Tensor.tolist()`` /
  ``.numpy()`` / ``.cpu()`` (on the CPU these never reach the dispatcher, so they are counted by wrapping the
  methods).

Measured per model, for each family at one scale (YOLO26 on both paths: the NMS-free default and ``end2end: False``):

- ``forward``: launches of one fused eval forward (``model.fuse()``, as ultralytics' predictor runs it), float32,
  batch 1, ``--imgsz`` 640, after one warm-up call (so that cached anchors are not counted);
- ``step``: launches of one training step, the forward, ``model.loss`` and the backward (no optimizer step), batch 4,
  ``--train-imgsz`` 320, ``--gts`` 6 boxes per image drawn from a fixed seed, TAL phase (``head.epoch`` None); after
  one warm-up step;
- ``syncs``: host syncs of that training step.

The heads pick a few forms by device, of equal values (``yolo_tood.nn.tap.one_kernel_forms``: one TopK on a GPU, a
sorting network or two small TopKs on the CPU); ``--forms cuda``, the default, counts the forms a GPU runs.

Usage:
    python scripts/bench_launches.py                         # yolov8n, yolo11n, yolo26n: stock, tap, tood
    python scripts/bench_launches.py --families yolov8 --ops tood   # also the op histogram of the tood rows
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("yolov8", "yolo11", "yolo26")
# The goals at scale n (tests/test_launches.py holds them): forward and step launches as a ratio to stock's, host syncs
# of a step as stock's count plus a margin
GOALS = {"forward": {"tap": 1.20, "tood": 1.50}, "step": {"tap": 1.20, "tood": 1.30}, "extra_syncs": 2}
HEADS = ("stock", "tap", "tood")

# Ops that launch no kernel: views and metadata (no data touched), allocation without a fill, and the host-side
# wrapping of Python scalars and literals (lift_fresh, scalar_tensor: CPU tensors that a CUDA kernel reads as arguments)
FREE_OPS = frozenset(
    """view _unsafe_view reshape _reshape_alias slice select expand expand_as transpose permute squeeze unsqueeze
    split split_with_sizes unsafe_split chunk unbind detach alias t as_strided narrow diagonal view_as
    lift_fresh lift_fresh_copy scalar_tensor empty empty_like empty_strided new_empty new_empty_strided
    _has_compatible_shallow_copy_type is_same_size sym_size sym_stride sym_numel sym_storage_offset
    result_type promote_types set_ resize_""".split()
)
# Ops that always make the host wait for the device (their output, or its size, is read on the host)
SYNC_OPS = frozenset(
    """_local_scalar_dense nonzero masked_select unique _unique _unique2 unique_dim unique_consecutive
    unique_dim_consecutive argwhere bincount""".split()
)  # bincount: on CUDA it reads its input's min and max on the host to size its output
# Tensor methods that read data on the host without reaching the dispatcher on the CPU (a device-to-host copy on a GPU)
HOST_READS = ("tolist", "numpy", "cpu")


def op_name(func) -> str:
    """The aten op's name without its overload (``aten.add.Tensor`` -> ``add``)."""
    return func._overloadpacket.__name__


def is_sync(func, args: tuple, kwargs: dict) -> bool:
    """Whether the aten call ``func(*args, **kwargs)`` makes the host wait for the device (module docstring)."""
    name = op_name(func)
    if name in SYNC_OPS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    return False


@dataclass
class Counts:
    """Launches and syncs recorded by ``count``, with the op histograms."""

    launches: int = 0
    syncs: int = 0
    ops: collections.Counter = field(default_factory=collections.Counter)
    sync_ops: collections.Counter = field(default_factory=collections.Counter)


class _Recorder(TorchDispatchMode):
    """Records every aten op into ``counts`` by the module docstring's rule."""

    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = op_name(func)
        if name not in FREE_OPS:
            self.counts.launches += 1
            self.counts.ops[name] += 1
        if is_sync(func, args, kwargs):
            self.counts.syncs += 1
            self.counts.sync_ops[name] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count():
    """Count the launches and host syncs of the code run inside: ``with count() as c: ...``; then ``c.launches``."""
    counts = Counts()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def host_read(name):
        def wrapper(self, *args, **kwargs):
            counts.syncs += 1
            counts.sync_ops[f"Tensor.{name}"] += 1
            return originals[name](self, *args, **kwargs)

        return wrapper

    for name in HOST_READS:
        setattr(torch.Tensor, name, host_read(name))
    try:
        with _Recorder(counts):
            yield counts
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


@contextlib.contextmanager
def device_forms(device: str):
    """Run the heads' device-dependent forms of ``device`` ("cuda" or "cpu") whatever device the tensors are on:
    ``yolo_tood.nn.tap.ONE_KERNEL_FORMS`` forces ``one_kernel_forms``'s choice between forms of equal values (one TopK
    vs a sorting network). A version without it (one form per op) counts as it is."""
    try:
        from yolo_tood.nn import tap
    except ImportError:  # before nn/ was split by concern
        from yolo_tood.nn import head as tap
    if not hasattr(tap, "ONE_KERNEL_FORMS"):
        yield
        return
    original = tap.ONE_KERNEL_FORMS
    tap.ONE_KERNEL_FORMS = device == "cuda"
    try:
        yield
    finally:
        tap.ONE_KERNEL_FORMS = original


def model_yaml(family: str, scale: str, head: str) -> str:
    """The YAML of a model: ultralytics' own for ``stock``, the project's ``cfg/`` file for a TOOD head."""
    stem = f"{family}{scale}"
    return f"{stem}.yaml" if head == "stock" else str(ROOT / "cfg" / f"{stem}-{head}.yaml")


def build(family: str, scale: str, head: str, end2end: bool | None = None, nc: int = 80):
    """Build a DetectionModel (random weights, fixed seed) with ultralytics' default train arguments attached;
    ``end2end`` overrides the YAML's (YOLO26)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    import yolo_tood  # noqa: F401  registers the heads

    cfg = yaml_model_load(model_yaml(family, scale, head))
    if end2end is not None:
        cfg["end2end"] = end2end
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=nc, verbose=False)
    model.args = get_cfg()
    return model


def synthetic_batch(batch: int, imgsz: int, gts: int, nc: int = 80, seed: int = 0) -> dict[str, torch.Tensor]:
    """An ultralytics training batch of random images with ``gts`` random boxes per image (normalised xywh)."""
    g = torch.Generator().manual_seed(seed)
    n = batch * gts
    wh = 0.05 + 0.4 * torch.rand(n, 2, generator=g)
    xy = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
        "batch_idx": torch.arange(batch).repeat_interleave(gts).float(),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
        "bboxes": torch.cat((xy, wh), 1),
    }


def forward_counts(model, imgsz: int = 640) -> Counts:
    """Launches of one fused eval forward at batch 1 (after a warm-up call)."""
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model = model.fuse(verbose=False)
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(x)
        with count() as c:
            model(x)
    return c


def step_counts(model, batch: dict[str, torch.Tensor]) -> Counts:
    """Launches and syncs of one training step (forward, loss, backward; after a warm-up step)."""
    model = model.train()

    def step():
        loss, _ = model.loss(batch)
        loss.sum().backward()
        model.zero_grad(set_to_none=True)

    step()
    with count() as c:
        step()
    return c


@dataclass
class Row:
    """One model's counts."""

    family: str
    head: str
    path: str  # "nms" or "nms-free" (YOLO26's end2end)
    forward: Counts
    step: Counts


def measure(family: str, head: str, scale: str, args: argparse.Namespace, end2end: bool | None = None) -> Row:
    """Count one model: its fused forward and its training step."""
    torch.set_num_threads(args.threads)
    with device_forms(args.forms):
        fwd = forward_counts(build(family, scale, head, end2end), args.imgsz)
        batch = synthetic_batch(args.batch, args.train_imgsz, args.gts)
        stp = step_counts(build(family, scale, head, end2end), batch)
    path = "nms-free" if family == "yolo26" and end2end is not False else "nms"
    return Row(family, head, path, fwd, stp)


def measure_all(families, heads, scale: str, args: argparse.Namespace) -> list[Row]:
    """Count every (family, path, head): YOLO26 on its NMS-free default and with ``end2end: False``."""
    rows = []
    for family in families:
        for end2end in (None, False) if family == "yolo26" else (None,):
            rows += [measure(family, head, scale, args, end2end) for head in heads]
    return rows


def ratio(value: int, base: int) -> str:
    return f"{value} ({value / base:.2f}x)" if base else str(value)


def table(rows: list[Row], scale: str) -> str:
    """Markdown table of the counts, with each head's ratio to stock of the same family and path."""
    lines = [
        "| model | path | forward launches | step launches | step syncs |",
        "|---|---|---|---|---|",
    ]
    stock = {(r.family, r.path): r for r in rows if r.head == "stock"}
    for r in rows:
        base = stock.get((r.family, r.path))
        fwd = ratio(r.forward.launches, base.forward.launches) if base else str(r.forward.launches)
        stp = ratio(r.step.launches, base.step.launches) if base else str(r.step.launches)
        syncs = f"{r.step.syncs} ({r.step.syncs - base.step.syncs:+d})" if base else str(r.step.syncs)
        name = f"{r.family}{scale}" + ("" if r.head == "stock" else f"-{r.head}")
        lines.append(f"| {name} | {r.path} | {fwd} | {stp} | {syncs} |")
    return "\n".join(lines)


def histogram(rows: list[Row], head: str) -> str:
    """The op histograms of the rows of ``head``: where the launches and the syncs are."""
    out = []
    for r in rows:
        if r.head != head:
            continue
        out.append(f"\n{r.family} {r.path} {head}")
        out.append("  forward: " + ", ".join(f"{k} {v}" for k, v in r.forward.ops.most_common()))
        out.append("  step: " + ", ".join(f"{k} {v}" for k, v in r.step.ops.most_common(40)))
        out.append("  syncs: " + ", ".join(f"{k} {v}" for k, v in r.step.sync_ops.most_common()))
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS))
    p.add_argument("--scale", default="n", choices=list("nsmlx"))
    p.add_argument("--imgsz", type=int, default=640, help="forward input size")
    p.add_argument("--train-imgsz", type=int, default=320, help="training step input size")
    p.add_argument("--batch", type=int, default=4, help="training step batch size")
    p.add_argument("--gts", type=int, default=6, help="boxes per image of the training step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ops", choices=HEADS, help="also print the op histograms of this head's rows")
    p.add_argument(
        "--forms",
        choices=("cuda", "cpu"),
        default="cuda",
        help="which of the heads' device-dependent forms to count: a GPU's (default) or the CPU's",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    heads = ["stock", *[h for h in args.heads if h != "stock"]]
    rows = measure_all(args.families, heads, args.scale, args)
    print(table(rows, args.scale))
    if args.ops:
        print(histogram(rows, args.ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
