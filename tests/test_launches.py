"""Kernel launches and host syncs of the TOOD heads against stock (``scripts/bench_launches.py``, its counting rule).

The counts are deterministic functions of the code (not timings): each aten op that would launch a kernel, counted on
the CPU with the forms a GPU runs. The goals (``bench_launches.GOALS``) hold for yolov8n, yolo11n and yolo26n, YOLO26 on
both paths, for both heads: the fused forward, the training step (forward, loss, backward) and its host syncs.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from helpers import load_script

bl = load_script("bench_launches")


@pytest.fixture(scope="module")
def rows() -> list:
    args = bl.parse_args([])
    return bl.measure_all(bl.FAMILIES, bl.HEADS, "n", args)


def _pairs(rows: list):
    stock = {(r.family, r.path): r for r in rows if r.head == "stock"}
    return [(r, stock[(r.family, r.path)]) for r in rows if r.head != "stock"]


def test_every_family_and_path_is_counted(rows):
    assert {(r.family, r.path, r.head) for r in rows} == {
        *((f, "nms", h) for f in ("yolov8", "yolo11", "yolo26") for h in bl.HEADS),
        *(("yolo26", "nms-free", h) for h in bl.HEADS),
    }


@pytest.mark.parametrize("count", ["forward", "step"])
def test_launches_within_the_goals(rows, count):
    over = [
        f"{r.family} {r.path} {r.head}: {getattr(r, count).launches} vs stock {getattr(s, count).launches}"
        for r, s in _pairs(rows)
        if getattr(r, count).launches > bl.GOALS[count][r.head] * getattr(s, count).launches
    ]
    assert not over, over


def test_host_syncs_of_a_step_within_the_goal(rows):
    over = [
        f"{r.family} {r.path} {r.head}: {r.step.syncs} ({dict(r.step.sync_ops)}) vs stock {s.step.syncs}"
        for r, s in _pairs(rows)
        if r.step.syncs > s.step.syncs + bl.GOALS["extra_syncs"]
    ]
    assert not over, over


def test_the_table_has_a_row_per_model_with_ratios(rows):
    table = bl.table(rows, "n")
    assert table.count("\n") == len(rows) + 1
    assert "| yolov8n-tap | nms | " in table and "x) |" in table


def test_the_counting_rule_on_a_hand_case():
    """Views and metadata are free; each other op launches; .item(), nonzero, boolean masks and tolist sync."""
    x = torch.arange(6.0)
    with bl.count() as c:
        y = x.view(2, 3).t().unsqueeze(0)  # free
        z = (y + 1).relu()  # 2 launches
        mask = z > 2  # 1 launch
        z[mask]  # 1 launch, 1 sync (a nonzero inside)
        z.sum().item()  # 2 launches (sum, the copy to the host), 1 sync
        torch.where(mask, z, 0.0)  # 1 launch: the scalar is wrapped on the host
        x.tolist()  # 1 sync, no aten op on the CPU
    assert c.launches == 7, c.ops
    assert c.syncs == 3 and dict(c.sync_ops) == {"index": 1, "_local_scalar_dense": 1, "Tensor.tolist": 1}


def test_device_forms_switches_the_heads_forms_and_restores_them():
    from yolo_tood.nn import tap

    with bl.device_forms("cuda"):
        assert tap.one_kernel_forms(torch.zeros(1))
    with bl.device_forms("cpu"):
        assert not tap.one_kernel_forms(torch.zeros(1))
    assert tap.ONE_KERNEL_FORMS is None and not tap.one_kernel_forms(torch.zeros(1))


def test_the_script_prints_the_table(capsys):
    args = ["--families", "yolov8", "--heads", "tap", "--imgsz", "64", "--train-imgsz", "64", "--batch", "2"]
    assert bl.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("| model | path |") and "yolov8n-tap" in out
    assert isinstance(bl.parse_args(args), argparse.Namespace)
