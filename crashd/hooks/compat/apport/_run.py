"""One bounded way to run a command for a hook: argv only (no shell), a timeout, an output cap."""

import os
import selectors
import subprocess
import time

TIMEOUT = 20  # seconds; below the runner's 30 s per hook, so the hook can still report the failure
CAP = 8 << 20  # bytes of output kept; below the runner's 10 MiB output cap


def run(argv, *, input=None, stderr=subprocess.STDOUT, env=None, timeout=TIMEOUT, cap=CAP):
    """(exit status, output bytes, what went wrong or None); the status is None if it never finished."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )
    output, problem = bytearray(), None
    pending = memoryview(input.encode() if isinstance(input, str) else input or b"")
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if proc.stdin:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"timed out after {timeout} seconds"
                break
            for key, _ in selector.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(proc.stdin.fileno(), pending[:65536]) :]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    selector.unregister(proc.stdout)
                output += data
                if len(output) > cap:
                    problem = f"wrote more than {cap >> 20} MiB"
                    break
            if problem:
                break
    if problem:
        proc.kill()
    status = proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream and not stream.closed:
            stream.close()
    return (None if problem else status), bytes(output[:cap]), problem


def matching_lines(argv, pattern, timeout=TIMEOUT):
    """The lines of the command's stdout that *pattern* (a compiled regex) matches, streamed; "" if it failed.

    Streamed, not buffered: a whole boot's journal may be far larger than
    ``CAP``, and only the matches are kept. The command is killed after *timeout*.
    """
    import threading

    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except OSError:
        return ""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    kept, size = [], 0
    try:
        for raw in proc.stdout:
            line = raw.decode("UTF-8", errors="replace")
            if pattern.search(line) and size < CAP:
                kept.append(line)
                size += len(raw)
    finally:
        proc.stdout.close()
        status = proc.wait()
        timer.cancel()
    return "".join(kept) if status == 0 else ""
