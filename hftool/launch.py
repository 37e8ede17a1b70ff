"""`--num-processes N`: start N copies of the same command, one per device (or CPU worker).

On GPUs the copies are started by `accelerate launch`; on CPU by `torch.distributed.run`
(gloo), because Accelerate's CPU launcher starts a single process unless MPI is installed.
Inside the copies Accelerate reads the usual environment (RANK, WORLD_SIZE, ...), so
`torchrun -m hftool ...` and `accelerate launch -m hftool ...` work the same way by hand.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from hftool.errors import HftoolError

FLAGS = ("--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port")


@dataclass
class Launch:
    num_processes: int | None = None  # per machine
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500

    @property
    def wanted(self) -> bool:
        return (self.num_processes or 1) > 1 or self.num_machines > 1


def in_distributed_run() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def strip_flags(argv: list[str]) -> list[str]:
    """argv without the launcher's own flags (the copies must not launch again)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if name in FLAGS:
            skip = "=" not in word
            continue
        out.append(word)
    return out


def command(launch: Launch, argv: list[str], gpu: bool) -> list[str]:
    """The launcher command line that runs `hftool argv...` in every process."""
    n = launch.num_processes or 1
    if launch.num_machines > 1 and not launch.main_process_ip:
        raise HftoolError("--num-machines > 1 needs --main-process-ip: the address of machine rank 0")
    if gpu:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n * launch.num_machines),
               "--num_machines", str(launch.num_machines)]
        if n * launch.num_machines > 1:
            cmd.append("--multi_gpu")
        if launch.num_machines > 1:
            cmd += ["--machine_rank", str(launch.machine_rank), "--main_process_ip", launch.main_process_ip,
                    "--main_process_port", str(launch.main_process_port)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n)]
        if launch.num_machines > 1:
            cmd += ["--nnodes", str(launch.num_machines), "--node_rank", str(launch.machine_rank),
                    "--master_addr", launch.main_process_ip, "--master_port", str(launch.main_process_port)]
        else:
            cmd += ["--standalone"]
    return [*cmd, "-m", "hftool", *argv]


def relaunch(launch: Launch, extra_args: list[str] = ()) -> None:
    """Replace this process with the launcher when more than one process is asked for."""
    if not launch.wanted or in_distributed_run():
        return
    import torch

    cmd = command(launch, [*strip_flags(sys.argv[1:]), *extra_args], torch.cuda.is_available())
    from hftool import logs

    logs.info("launching: " + " ".join(cmd[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    if cmd[2] != "torch.distributed.run":
        os.execv(cmd[0], cmd)
    sys.exit(run_torchrun(cmd[3:]))


def run_workers(launch: Launch, argv: list[str]) -> int:
    """Run `hftool argv...` in every process of `launch` and wait for them: their exit code. Unlike
    relaunch, this process carries on afterwards (eval-suite compares and gates in one process)."""
    import subprocess

    import torch

    from hftool import logs

    cmd = command(launch, argv, torch.cuda.is_available())
    logs.info("launching: " + " ".join(cmd[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    if cmd[2] != "torch.distributed.run":
        return subprocess.run(cmd, check=False).returncode
    return run_torchrun(cmd[3:])


def run_torchrun(args: list[str]) -> int:
    """torchrun in this process, so that a failed worker ends the run with the worker's own exit
    code and its one-line error, not the launcher's traceback (HFTOOL_DEBUG=1 keeps it all)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if not os.environ.get("HFTOOL_DEBUG"):
        for name in list(logging.root.manager.loggerDict):  # agent chatter, the OMP notice
            if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(args))
    except ChildFailedError as err:
        if os.environ.get("HFTOOL_DEBUG"):
            raise
        rank, failure = err.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -15: killed by SIGTERM
        from hftool import logs

        logs.warn(f"process {rank} failed (exit code {failure.exitcode}); the other processes were stopped")
        return code
    except SignalException as err:  # SIGTERM/SIGINT here: passed on to the workers, which save and stop
        if os.environ.get("HFTOOL_DEBUG"):
            raise
        return 128 + int(err.sigval)
    return 0
