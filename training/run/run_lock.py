"""One run per artifacts_dir: an inter-process lock on the folder, and who holds it written beside the lock.

The lock is the operating system's (filelock: flock on POSIX), so it goes with the process that
holds it: a run killed by SIGKILL or a power cut leaves the files behind but never blocks the
next run. Only the holder's details (`.run.lock.json`) can be stale, and the next holder
rewrites them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from training.configs import ConfigError
from training.utils.io import ensure_dir, save_json

LOCK_FILE = ".run.lock"
HOLDER_FILE = ".run.lock.json"


class RunFolderBusy(ConfigError):
    """Another process is running in this artifacts_dir."""


@contextmanager
def hold_run_folder(directory: str | Path) -> Iterator[Path]:
    """Hold `directory` for this process, or raise RunFolderBusy at once naming the process that holds it.

    A folder made here for a run that then fails before writing anything is removed again: a refused
    run leaves no folder behind."""
    directory = Path(directory).absolute()
    made = [folder for folder in (directory, *directory.parents) if not folder.exists()]  # deepest first
    directory = ensure_dir(directory)
    lock = FileLock(directory / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusy(_busy_message(directory)) from None
    failed = True
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
        save_json(holder, directory / HOLDER_FILE)
        yield directory
        failed = False
    finally:
        (directory / HOLDER_FILE).unlink(missing_ok=True)
        if made and failed and {p.name for p in directory.iterdir()} == {LOCK_FILE}:
            (directory / LOCK_FILE).unlink()  # still held: a run starting now makes a new lock file, and waits for none
            lock.release()
            _remove_if_empty(made)
        else:
            lock.release()


def _remove_if_empty(folders: list[Path]) -> None:
    try:
        for folder in folders:
            folder.rmdir()
    except OSError:  # another run has started in it meanwhile
        pass


def _busy_message(directory: Path) -> str:
    holder = _read_holder(directory)
    if holder:
        who = f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}: {holder.get('command')}"
    else:
        who = f"a process that has not written {directory / HOLDER_FILE}"
    return (
        f"artifacts_dir {directory.resolve()} is in use by another training run ({who}). "
        "Wait for it to finish, or set artifacts_dir to another folder."
    )


def _read_holder(directory: Path, wait_seconds: float = 2.0) -> dict | None:
    # The holder writes its details just after it takes the lock; give it a moment. Details of a
    # dead process on this host are from an earlier, killed holder, not from the live one.
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            holder = json.loads((directory / HOLDER_FILE).read_text(encoding="utf-8"))
            if holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", -1))):
                return holder
        except (OSError, ValueError, TypeError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
