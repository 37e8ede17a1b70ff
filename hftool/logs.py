"""Messages for people: printed once (by the main process) to stderr, prefixed `hftool:`."""

import os
import sys


def is_main_process() -> bool:
    # Works before an Accelerator exists: torchrun and accelerate launch both set RANK.
    return os.environ.get("RANK", "0") == "0"


def info(message: str) -> None:
    if is_main_process():
        print(f"hftool: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    if is_main_process():
        print(f"hftool: warning: {message}", file=sys.stderr, flush=True)
