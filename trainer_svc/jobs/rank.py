"""One rank of a job in a Kubernetes pod: ``python -m trainer_svc.jobs.rank LAUNCH_FILE``, started by
torchrun (`trainer_svc.jobs.cluster_objects.rank_command`), which sets the rank's place in the environment.

The launch file holds the job's `WorkerArgs` as JSON; the rank's messages go to ``rank-<RANK>.jsonl`` beside
it (`trainer_svc.jobs.eventfile`), which the trainer reads. The exit status tells torchrun (and so the pod
and the Kubernetes Job) whether the rank finished: 0 only after "done".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainer_svc.jobs import eventfile
from trainer_svc.jobs.worker import Channel, WorkerArgs, run_rank
from trainer_svc.training.distributed import LaunchEnv


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m trainer_svc.jobs.rank LAUNCH_FILE", file=sys.stderr)
        return 2
    launch = Path(argv[0])
    args = WorkerArgs.from_json(json.loads(launch.read_text()))
    writer = eventfile.EventWriter(eventfile.rank_file(launch.parent, LaunchEnv().rank))
    said: list[str] = []

    def send(message: dict[str, object]) -> None:
        said.append(str(message.get("type")))
        writer.send(message)

    try:
        run_rank(args, Channel(send, parent_pid=0, cancel=None))
    finally:
        writer.close()
    return 0 if said and said[-1] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
