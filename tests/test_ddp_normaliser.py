"""Two ranks learn what one rank learns: TOOD's loss normalisers averaged over ranks, as MMDetection's TOOD head.

Why the gradients match. Ultralytics' trainer multiplies each rank's loss by the world size W before backward, and
DDP averages the gradients over the ranks. TOODLoss returns B_r * S_r / N for rank r (B_r images, S_r the summed
loss terms, N the normaliser), so the averaged gradient is (1/W) sum_r W B_r dS_r / N = (B / W) dS / N on a global
batch of B = W B_r images. One rank on that batch gets B dS / N_1 with N_1 = sum_r N_r. The two agree exactly when
N = N_1 / W = mean_r N_r: the cross-rank mean of the per-rank normalisers (``reduce_mean``). With per-rank
normalisers each rank's images are weighted by 1 / N_r instead, which the last check shows. BatchNorm is per rank
(no SyncBN), so the models run their BatchNorms in eval; TOOD's assignment and loss are per image otherwise.
The normalisers clamp at 1 (with tiny IoUs at init the TAL targets can sum below that), so the batch's GTs are large
and centred, where an untrained head's boxes overlap them, and the test checks each rank's totals exceed 1 and differ.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.distributed as dist

from yolo_tood.train import loss as tood_loss

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

WORLD = 2
IMGSZ = 128
GTS_PER_IMAGE = (3, 2, 1, 1)  # ranks 0 and 1 get 2 images each, with different numbers of objects
PHASES = {"atss": 0, "tal": 1}  # head.epoch, with a 1-epoch warm-up (the model YAML's atss_epochs)
# (DDP keyword arguments, whether the normalisers are averaged over ranks)
MODES = {
    "find_unused": ({"find_unused_parameters": True}, True),  # ultralytics' default (compile=False)
    "static_graph": ({"static_graph": True}, True),  # ultralytics with compile=True
    "per_rank": ({"find_unused_parameters": True}, False),  # without reduce_mean, for contrast
}


def model_cfg(kind: str) -> str:
    return {"tood": "yolov8n-tood.yaml", "tap": "yolov8n-tap.yaml"}[kind]


def build_model(kind: str) -> torch.nn.Module:
    """An n-scale model in training mode with every BatchNorm in eval (BN statistics are per rank under DDP)."""
    from ultralytics.nn.tasks import DetectionModel

    import yolo_tood  # noqa: F401  (registers the heads in a spawned worker)

    torch.manual_seed(0)
    model = DetectionModel(model_cfg(kind), nc=3, verbose=False).train()
    model.yaml["atss_epochs"] = 1  # read by the loss, which the first step creates
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    return model


def global_batch() -> dict:
    """Four images with large, centred GTs (normalised xywh), so that the TAL targets sum above the clamp at 1."""
    g = torch.Generator().manual_seed(0)
    n = sum(GTS_PER_IMAGE)
    xy = 0.5 + (torch.rand(n, 2, generator=g) - 0.5) * 0.2
    wh = 0.6 + torch.rand(n, 2, generator=g) * 0.3
    return {
        "img": torch.rand(len(GTS_PER_IMAGE), 3, IMGSZ, IMGSZ, generator=g),
        "batch_idx": torch.cat([torch.full((c,), float(i)) for i, c in enumerate(GTS_PER_IMAGE)]),
        "cls": torch.randint(0, 3, (n, 1), generator=g).float(),
        "bboxes": torch.cat((xy, wh), 1),
    }


def rank_batch(batch: dict, rank: int, world: int) -> dict:
    """The images of ``rank`` (a contiguous slice, as a DistributedSampler's share) with their labels re-indexed."""
    per = batch["img"].shape[0] // world
    keep = (batch["batch_idx"] >= rank * per) & (batch["batch_idx"] < (rank + 1) * per)
    return {
        "img": batch["img"][rank * per : (rank + 1) * per],
        "batch_idx": batch["batch_idx"][keep] - rank * per,
        "cls": batch["cls"][keep],
        "bboxes": batch["bboxes"][keep],
    }


def set_phase(model: torch.nn.Module, phase: str) -> None:
    model.model[-1].epoch = PHASES[phase]


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def worker(rank: int, world: int, store: str, kind: str, out: str) -> None:
    """One rank: for every mode and phase, the gradient of one step on its share, then two SGD steps."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    from ultralytics.utils.torch_utils import TORCH_2_13

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = {}
        batch = rank_batch(global_batch(), rank, world)
        # as ultralytics' trainer wraps the model (device_ids only on an accelerator; buffers not synchronised)
        no_buffer_sync = {"forward_sync_buffers" if TORCH_2_13 else "broadcast_buffers": False}
        for (mode, (ddp_kwargs, averaged)), phase in itertools.product(MODES.items(), PHASES):
            model = build_model(kind)  # the same initial weights for every (mode, phase), as the reference's
            set_phase(model, phase)
            ddp = DDP(model, **no_buffer_sync, **ddp_kwargs)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            per_rank = mock.patch.object(tood_loss, "reduce_mean", side_effect=lambda x: x)
            with contextlib.nullcontext() if averaged else per_rank:
                for step in range(2):
                    optimizer.zero_grad(set_to_none=True)
                    loss, _ = ddp(batch)  # DetectionModel.forward(dict) -> loss, as the trainer calls it
                    (loss.sum() * world).backward()  # the trainer's `self.loss *= self.world_size`
                    if step == 0:
                        results[(mode, phase)] = grads(model)
                    optimizer.step()
            results[(mode, phase, "params")] = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def one_rank_reference(kind: str) -> dict:
    """The gradient of one step of one process (no process group) on the global batch, per phase."""
    batch = global_batch()
    model = build_model(kind)
    ref = {}
    for phase in PHASES:
        set_phase(model, phase)
        model.zero_grad(set_to_none=True)
        loss, _ = model(batch)
        loss.sum().backward()
        ref[phase] = grads(model)
    return ref


def rank_totals(kind: str) -> dict[str, list[list[float]]]:
    """The normalisers' totals (cls, box) each rank's share gives, per phase (the condition the test needs)."""
    batch = global_batch()
    model = build_model(kind)
    totals = {}
    for phase in PHASES:
        set_phase(model, phase)
        totals[phase] = []
        for rank in range(WORLD):
            seen = []
            record = mock.patch.object(tood_loss, "reduce_mean", side_effect=lambda x, s=seen: s.append(float(x)) or x)
            with record:
                model(rank_batch(batch, rank, WORLD))
            totals[phase].append(seen)
    return totals


@pytest.mark.parametrize("kind", ["tood", "tap"])
def test_two_ranks_get_the_one_rank_gradient_on_the_global_batch(kind, tmp_path):
    totals = rank_totals(kind)
    for phase, (rank0, rank1) in totals.items():
        assert len(rank0) == 2 and min(rank0 + rank1) > 1, (phase, totals)  # above the clamp: the mean is what acts
        assert all(abs(a - b) > 0.1 for a, b in zip(rank0, rank1)), (phase, totals)  # ranks differ: the mean matters

    torch.multiprocessing.spawn(
        worker, args=(WORLD, str(tmp_path / "store"), kind, str(tmp_path)), nprocs=WORLD, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    ref = one_rank_reference(kind)
    for mode, phase in itertools.product(MODES, PHASES):  # DDP keeps the ranks' weights identical
        for name, p0 in ranks[0][(mode, phase, "params")].items():
            assert torch.equal(p0, ranks[1][(mode, phase, "params")][name]), (mode, phase, name)
    for phase in PHASES:
        assert set(ranks[0][("find_unused", phase)]) == set(ref[phase])  # every parameter gets a gradient
        for mode in ("find_unused", "static_graph"):
            for name, g in ref[phase].items():  # float sums in another order: tolerance relative to the tensor's scale
                atol = 1e-5 * float(g.abs().max()) + 1e-12
                torch.testing.assert_close(ranks[0][(mode, phase)][name], g, rtol=1e-4, atol=atol, msg=(mode, name))
        # per-rank normalisers weight each rank's images by 1 / N_r: not the one-rank gradient
        per_rank = ranks[0][("per_rank", phase)]
        assert any(
            not torch.allclose(per_rank[n], g, rtol=1e-2, atol=1e-2 * float(g.abs().max()))
            for n, g in ref[phase].items()
        ), phase


def test_one_rank_group_gives_the_same_loss_bit_for_bit(tmp_path):
    """In a 1-rank process group ``reduce_mean`` is the identity: the loss equals the loss without a group."""
    model = build_model("tap")
    batch = global_batch()
    set_phase(model, "tal")
    without = model(batch)[0]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        within = model(batch)[0]
    finally:
        dist.destroy_process_group()
    assert torch.equal(within, without)


def test_validation_losses_make_no_collective():
    """Rank 0 validates alone (the EMA head in eval mode): its loss must not wait for ranks that never call it."""
    model = build_model("tap").eval()
    set_phase(model, "tal")
    batch = global_batch()
    with (
        mock.patch.object(dist, "is_initialized", return_value=True),
        mock.patch.object(dist, "get_world_size", return_value=2),
        mock.patch.object(dist, "all_reduce", side_effect=AssertionError("a collective in a validation loss")),
    ):
        preds = model(batch["img"])[1]  # eval: (inference output, training dict)
        loss, _ = model.loss(batch, preds)
    assert loss.isfinite().all()
