"""Multi-GPU (DDP) workers: ultralytics' generated worker script builds and trains a TOOD model in a fresh process.

Ultralytics' multi-GPU training pickles the trainer's class, args, model and callbacks (``generate_ddp_file``) and
launches ``python -m torch.distributed.run --nproc_per_node N <file>`` (``generate_ddp_command``); each worker is a
fresh interpreter that unpickles that state, rebuilds the trainer and trains. Here the generator is ultralytics'
own, for a trainer set up exactly as ``YOLO(...).train()`` sets it up, and its file is executed in a fresh process.

What cannot run on this CPU-only machine: the trainer only spawns workers when ``device`` names more than one
accelerator (``world_size > 1``), and each worker's ``_setup_ddp`` then binds a CUDA/NPU/XPU device and joins an
NCCL (or gloo) group of ``world_size`` ranks before wrapping the model in ``DistributedDataParallel``. So the
launcher is not run; the generated file is run as one worker with no distributed environment (``RANK`` unset, the
trainer's CPU path), which covers unpickling, the trainer rebuild, the model build from the YAML or the pickled
model, TOOD's loss and callbacks, and saving. The DDP wrapper itself is covered separately: a TOOD model wrapped in
``DistributedDataParallel`` with the trainer's arguments, in a 1-rank gloo group on CPU, computes the TOOD loss and
gets gradients in every head parameter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ultralytics import YOLO
from ultralytics.utils import dist

from yolo_tood.data import make_shapes_dataset

pytest.importorskip("cloudpickle")  # ultralytics' DDP state is pickled with cloudpickle

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "cfg" / "yolov8n-tood.yaml"


def run_python(args: list[str], cwd: Path) -> str:
    """Run a fresh interpreter with this process's environment; return its output, failing with it on error."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=dict(os.environ))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{args} failed:\n{log[-4000:]}"
    return log


def make_trainer(model: YOLO, data: Path, project: Path, from_weights: bool):
    """A trainer set up as ``YOLO.train()`` does before calling ``trainer.train()`` (ultralytics/engine/model.py)."""
    args = {
        **model.overrides,
        "data": str(data),
        "epochs": 1,
        "imgsz": 64,
        "batch": 8,
        "workers": 0,
        "device": "cpu",
        "plots": False,
        "project": str(project),
        "name": "ddp",
        "mode": "train",
    }
    trainer = model._smart_load("trainer")(overrides=args, _callbacks=model.callbacks)
    if from_weights:  # a fine-tuning run: the model object itself is pickled for the workers
        trainer.model = trainer.get_model(weights=model.model, cfg=model.model.yaml)
    return trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("ddp_data"), train=16, val=8, imgsz=64)


@pytest.mark.parametrize(
    "kind,from_weights",
    [("tood", False), ("tood", True), ("tap", False), ("yolo26-tap", False)],
    ids=["from_yaml", "from_model", "tap", "yolo26_tap"],
)
def test_generated_ddp_worker_trains_tood(data, tmp_path, monkeypatch, kind, from_weights):
    monkeypatch.setattr(dist, "USER_CONFIG_DIR", tmp_path)  # the DDP files go under USER_CONFIG_DIR/DDP
    head_name = {"tood": "TOODDetect", "tap": "TAPDetect", "yolo26-tap": "TAPDetect"}[kind]
    model = YOLO("yolo26n-tap.yaml" if kind == "yolo26-tap" else CFG.with_name(f"yolov8n-{kind}.yaml"))
    if from_weights:
        model.save(tmp_path / "start.pt")
        model = YOLO(tmp_path / "start.pt")
    trainer = make_trainer(model, data, tmp_path, from_weights)
    cmd, file = dist.generate_ddp_command(trainer)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[-1] == file and Path(file).with_suffix(".pt").exists()

    log = run_python([file], tmp_path)  # what each rank runs, here as a single non-distributed worker
    assert "TOOD: starting at epoch 1 in the TAL phase" in log  # TOOD callbacks ran in the worker (1 epoch: no warm-up)
    assert head_name in log or from_weights  # a model built from the YAML prints its layer table
    best = tmp_path / "ddp" / "weights" / "best.pt"
    assert best.exists(), log[-3000:]
    trained = YOLO(best).model
    assert type(trained.model[-1]).__name__ == head_name
    criterion = trained.criterion if trained.criterion is not None else trained.init_criterion()
    losses = [criterion.one2many, criterion.one2one] if kind == "yolo26-tap" else [criterion]  # E2ELoss's branches
    assert [type(c).__name__ for c in losses] == ["TOODLoss"] * len(losses)
    rows = (tmp_path / "ddp" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + the one epoch


DDP_STEP = """
import copy, torch, torch.distributed as td
from torch.nn.parallel import DistributedDataParallel
from ultralytics.models.yolo.detect import DetectionTrainer

td.init_process_group("gloo", init_method="file://{store}", rank=0, world_size=1)
trainer = DetectionTrainer(overrides={{"model": r"{cfg}", "data": r"{data}", "imgsz": 64, "device": "cpu"}})
model = trainer.get_model(cfg=r"{cfg}", verbose=False).train()
model.args = trainer.args  # as DetectionTrainer.set_model_attributes
model.model[-1].epoch = 0  # epoch 1, inside the ATSS warm-up (a third of the run's epochs), as the callbacks set
plain = copy.deepcopy(model)
# As BaseTrainer._setup_train wraps the model for world_size > 1, minus device_ids (CPU)
ddp = DistributedDataParallel(model, find_unused_parameters=True, broadcast_buffers=False)
torch.manual_seed(0)
batch = {{
    "img": torch.rand(2, 3, 256, 256),  # large enough for the 0.9 box to be assigned on P5
    "batch_idx": torch.tensor([0.0, 0.0, 1.0, 1.0]),  # small, medium and large objects: positives on P3, P4, P5
    "cls": torch.tensor([[0.0], [1.0], [2.0], [1.0]]),
    "bboxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.6, 0.6, 0.45, 0.45], [0.3, 0.6, 0.2, 0.25], [0.5, 0.5, 0.9, 0.9]]),
}}
for m in (ddp, plain):
    loss, items = m(batch)
    loss.sum().backward()
head, ref = model.model[-1], dict(plain.model[-1].named_parameters())
grads = [(n, p.grad, ref[n].grad) for n, p in head.named_parameters() if p.requires_grad]
no_grad = [n for n, g, _ in grads if g is None or not g.abs().sum() > 0]
differ = [n for n, g, r in grads if g is not None and not torch.allclose(g, r, rtol=1e-4, atol=1e-7)]
print("CRITERION", type(model.criterion).__name__, "HEAD", type(head).__name__, "NO_GRAD", no_grad, "DIFFER", differ)
td.destroy_process_group()
"""


def test_tood_model_trains_a_step_inside_distributed_data_parallel(data, tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_STEP.format(store=tmp_path / "store", cfg=CFG, data=data))
    out = run_python([str(script)], tmp_path).splitlines()
    line = next(x for x in out if x.startswith("CRITERION"))
    assert line == "CRITERION TOODLoss HEAD TOODDetect NO_GRAD [] DIFFER []", line


def test_cpu_device_never_spawns_workers(data, tmp_path):
    """The limit stated above: on CPU the trainer trains in-process (world_size 0), it never launches DDP workers."""
    trainer = make_trainer(YOLO(CFG), data, tmp_path, from_weights=False)
    assert trainer.world_size == 0 and not trainer.ddp
