"""Child processes that a test only waits for, started as soon as the session's tests are collected.

The suite runs on one core; its two longest tests (the CUDA simulator suite, the loading fuzzer) spend their
time waiting for a child process. A test marked `@pytest.mark.child_process(run=FUNCTION)` has its child
started by conftest.py when collection ends, so it runs on the other core meanwhile; the test then takes the
result with `finished(request, FUNCTION, timeout)`. Run alone (or deselected), the same test starts its child
itself: the checks do not depend on the head start.

FUNCTION() returns the keyword arguments of subprocess.Popen for the child (args, cwd, env), or None when the
child is not to run in this process (the test then skips itself as before).
"""

import subprocess

STARTED = {}     # node id -> running Popen


def start(nodeid, run):
    options = run()
    if options is not None and nodeid not in STARTED:
        STARTED[nodeid] = subprocess.Popen(**options, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(request, run, timeout) -> subprocess.CompletedProcess:
    """The child's CompletedProcess: the one started at collection, or one started now. A child past `timeout`
    seconds of waiting here is killed and the test fails naming it."""
    process = STARTED.pop(request.node.nodeid, None)
    if process is None:
        options = run()
        process = subprocess.Popen(**options, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"{process.args}: still running after {timeout} s of waiting; killed") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def stop_all():
    """At the session's end: children whose tests never ran (an interrupted or -x session) are ended."""
    while STARTED:
        _, process = STARTED.popitem()
        process.kill()
        process.communicate()
