"""One bounded way to run a command for a hook: argv only (no shell), a timeout, an output cap.

A thin shape over ``crashd_process.run`` (``crashd/process.py``, which the hook child loads by
path before any hook runs; its docstring says why), in the form the apport functions here want.
"""

import subprocess

import crashd_process

TIMEOUT = 20  # seconds; below the runner's 30 s per hook, so the hook can still report the failure
CAP = 8 << 20  # bytes of output kept; below the runner's 10 MiB output cap


def run(argv, *, input=None, stderr=subprocess.STDOUT, env=None, timeout=TIMEOUT, cap=CAP):
    """(exit status, output bytes, what went wrong or None); the status is None if it never finished.

    *env* None: the hook's identity, PATH and LANG (an allow-list); otherwise exactly *env*.
    """
    done = crashd_process.run(argv, input=input, stderr=stderr, env=env, timeout=timeout, cap=cap)
    return done.status, done.output, done.problem


def matching_lines(argv, pattern, timeout=TIMEOUT):
    """The lines of the command's stdout that *pattern* (a compiled regex) matches, streamed; "" if it failed.

    Streamed, not buffered: a whole boot's journal may be far larger than
    ``CAP``, and only the matches are kept. The command is killed after *timeout*.
    """

    def keep(line):
        return bool(pattern.search(line.decode("UTF-8", "replace")))

    try:
        done = crashd_process.run(argv, timeout=timeout, stderr=None, keep=keep)
    except OSError:
        return ""
    return done.output.decode("UTF-8", "replace") if done.status == 0 else ""
