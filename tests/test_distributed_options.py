"""How many processes a job trains with, before any trains: the form fields nproc_per_node and nnodes, the
trainer's check against its GPUs or CPU cores (INVALID_ARGUMENT saying what it has), the slots a job of N
ranks takes, how the ends of a job's ranks make its outcome, the ranks' JSON-lines event files, and a
checkpoint written before these fields existed still resuming."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from gateway.errors import ApiError
from gateway.train.form import build_spec
from tests.support.digits import digit_images
from tests.support.trainer import digits_spec, running_trainer, trainer_settings, upload
from trainer_svc.jobs import eventfile
from trainer_svc.jobs.slots import Placement, SlotPool, cpu_cores
from trainer_svc.jobs.supervisor import RankEnd, combine
from trainer_svc.training import resume
from trainer_svc.training.config import TrainConfig
from trainer_svc.training.events import TrainEvent
from vision.errors import InvalidArgument
from vision.v1 import trainer_pb2

LABELS = {1: "cat", 2: "dog"}


# -- POST /train's form -------------------------------------------------------------------------------------
@pytest.mark.fast
def test_the_form_passes_nproc_per_node_and_nnodes_and_leaves_them_to_the_trainer_when_unset() -> None:
    spec = build_spec({"nproc_per_node": "4", "nnodes": "2"}, LABELS)
    assert (spec.nproc_per_node, spec.nnodes) == (4, 2)
    assert (build_spec({}, LABELS).nproc_per_node, build_spec({}, LABELS).nnodes) == (0, 0)
    assert build_spec({"nproc_per_node": "0"}, LABELS).nproc_per_node == 0  # 0: every GPU of the trainer


@pytest.mark.fast
@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"nproc_per_node": "65"}, "nproc_per_node must be a whole number from 0 to 64, got '65'"),
        ({"nproc_per_node": "-1"}, "nproc_per_node must be a whole number from 0 to 64"),
        ({"nproc_per_node": "2.5"}, "nproc_per_node must be a whole number from 0 to 64"),
        ({"nproc_per_node": "\uff19"}, "nproc_per_node must be a whole number"),  # a digit int() takes
        ({"nnodes": "0"}, "nnodes must be a whole number from 1 to 64, got '0'"),
        ({"nnodes": "9" * 40}, "nnodes must be a whole number from 1 to 64"),
    ],
)
def test_process_counts_out_of_range_are_400(fields: dict[str, str], fragment: str) -> None:
    with pytest.raises(ApiError) as raised:
        build_spec(fields, LABELS)
    assert (raised.value.status, raised.value.code) == (400, "invalid_argument")
    assert fragment in raised.value.message


# -- the trainer's check ------------------------------------------------------------------------------------
@pytest.mark.fast
def test_zero_means_every_gpu_on_cuda_and_one_process_on_cpu() -> None:
    assert Placement("local", gpus=4, cpu_cores=16).resolve(0, 0) == (4, 1)
    assert Placement("local", gpus=0, cpu_cores=16).resolve(0, 0) == (1, 1)
    assert Placement("kubernetes", gpus=8, cpu_cores=64, max_nodes=4).resolve(0, 3) == (8, 3)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("placement", "nproc", "nnodes", "message"),
    [
        (
            Placement("local", 2, 16),
            3,
            1,
            "nproc_per_node=3 is more than the trainer's 2 GPUs: ask for at most 2",
        ),
        (Placement("local", 0, 2), 3, 1, "nproc_per_node=3 is more than the trainer's 2 CPU cores"),
        (Placement("local", 2, 16), 1, 2, "nnodes=2 needs the trainer's Kubernetes backend"),
        (Placement("kubernetes", 4, 64, 8), 1, 9, "nnodes=9 is more than the 8 pods a job may take"),
        (Placement("kubernetes", 4, 64, 8), 5, 1, "more than the trainer's 4 GPUs of a job pod"),
        (Placement("local", 2, 16), 65, 1, "nproc_per_node must be between 0 (the default) and 64"),
    ],
)
def test_more_processes_than_the_trainer_has_are_refused_saying_what_it_has(
    placement: Placement, nproc: int, nnodes: int, message: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        placement.resolve(nproc, nnodes)
    assert message in raised.value.message


def test_a_job_asking_for_more_cpu_processes_than_cores_is_invalid_argument_and_nothing_is_queued(
    tmp_path: Path,
) -> None:
    settings = trainer_settings(tmp_path)
    with running_trainer(settings) as (_, manager, stub):
        for fields, fragment in (
            ({"nproc_per_node": cpu_cores() + 1}, f"than the trainer's {cpu_cores()} CPU cores"),
            ({"nnodes": 2}, "nnodes=2 needs the trainer's Kubernetes backend"),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                stub.CreateJob(upload(digits_spec(**fields), []), timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in raised.value.details()
        assert manager.db.page(10, 0, None) == []
        job = stub.CreateJob(upload(digits_spec(nproc_per_node=0, epochs=1), digit_images(32, 5)), timeout=30)
        stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=job.id), timeout=10)
        (row,) = manager.db.page(10, 0, None)
    assert (row.config.nproc_per_node, row.config.nnodes) == (1, 1)  # CPU: 0 means one process


# -- slots --------------------------------------------------------------------------------------------------
@pytest.mark.fast
def test_a_job_of_n_ranks_takes_n_gpus_and_waits_until_they_are_free() -> None:
    pool = SlotPool(["cuda:0", "cuda:1", "cuda:2"])
    two, one = TrainConfig("a", nproc_per_node=2), TrainConfig("b")
    assert pool.needed(two) == 2 and pool.needed(one) == 1
    assert pool.take(2) == ["cuda:0", "cuda:1"]
    assert pool.take(2) is None  # one GPU left: the job of two waits (one job per GPU)
    assert pool.take(1) == ["cuda:2"]
    pool.give(["cuda:1", "cuda:0"])
    assert pool.take(2) == ["cuda:0", "cuda:1"]
    cpu = SlotPool(["cpu"])
    assert cpu.needed(two) == 1  # CPU ranks share the one CPU slot


# -- how a job of several ranks ended -----------------------------------------------------------------------
@pytest.mark.fast
def test_a_killed_rank_makes_the_job_crash_and_resume_whatever_the_others_said() -> None:
    ends = [RankEnd(0, {"type": "lost"}, 0), RankEnd(1, None, -9)]
    outcome, how = combine(ends, 2)
    assert outcome is None
    assert how.startswith("the training process of rank 1 (of 2) was killed by SIGKILL")


@pytest.mark.fast
def test_a_ranks_own_failure_fails_the_job_with_its_reason() -> None:
    bad = {"type": "failed", "reason": "cannot read training image x.png"}
    assert combine([RankEnd(0, {"type": "lost"}, 0), RankEnd(1, bad, 0)], 2) == (
        bad,
        "the training process of rank 1 (of 2) failed",
    )
    assert combine([RankEnd(1, {"type": "done"}, 0), RankEnd(0, {"type": "done"}, 0)], 2)[0] == {
        "type": "done"
    }
    assert combine([RankEnd(0, None, -9)], 1)[1] == (
        "the training process was killed by SIGKILL (the system may have run out of memory)"
    )


# -- event files --------------------------------------------------------------------------------------------
@pytest.mark.fast
def test_event_files_carry_the_pipe_messages_and_skip_a_line_cut_short(tmp_path: Path) -> None:
    path = eventfile.rank_file(tmp_path, 0)
    writer = eventfile.EventWriter(path)
    tail = eventfile.EventTail(path)
    event = TrainEvent("epoch", 1, 3, 10, 10, train_loss=0.5, val_accuracy=0.75)
    writer.send({"type": "event", "event": event})
    writer.send({"type": "dataset", "class_counts": {"cat": 5}})
    assert tail.read() == [{"type": "event", "event": event}, {"type": "dataset", "class_counts": {"cat": 5}}]
    with open(path, "a") as f:
        f.write('{"type": "don')  # a rank killed mid-line
    assert tail.read() == [] and eventfile.last_word(path) is None
    with open(path, "a") as f:
        f.write('e"}\n')
    writer.send({"type": "done"})
    writer.close()
    assert eventfile.last_word(path) == {"type": "done"}
    assert eventfile.last_word(eventfile.rank_file(tmp_path, 1)) is None  # a rank that never wrote


# -- checkpoints from before ------------------------------------------------------------------------------
@pytest.mark.fast
def test_a_checkpoint_written_before_the_process_count_fields_still_resumes() -> None:
    config = TrainConfig("digits", architecture="smallcnn", pretrained=False, freeze_backbone=False)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1)
    generator = torch.Generator()
    old_args = {k: v for k, v in config.to_dict().items() if k not in ("nproc_per_node", "nnodes")}
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(), "scaler": {}, "epoch": 1, "history": [],
        "best": {"accuracy": 0.5, "epoch": 1}, "bad_epochs": 0, "finished": False, "args": old_args,
        "rng": resume.capture_rng(generator),
    }  # fmt: skip
    parts = {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler, "scaler": None}
    assert resume.restore(state, config, parts, generator)["epoch"] == 1
    with pytest.raises(Exception, match="different training settings"):
        resume.restore(
            state, TrainConfig.from_dict({**config.to_dict(), "nproc_per_node": 2}), parts, generator
        )
