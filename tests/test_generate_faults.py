"""Faults during a generation leave nothing behind: a run killed with SIGKILL (before loading, and in the middle
of writing the mp4) leaves only its lock and partial file, which the next run to that path removes before writing
a whole mp4; a disk that fills up while the mp4 is written (an injected ENOSPC at the first packet, in the middle
and at the trailer, and, where root may mount one, a real tmpfs too small for the video) is exit code 1 and one
`generate.py: error:` line naming the output path, with no output, partial or lock file left."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from ltx_mlx.cli.generate import main as generate
from pipeline_fixtures import convert_folder, write_pipeline_checkpoints

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a cat walks on the beach at sunset"
SMALL = ["--height", "64", "--width", "64", "--num-frames", "9", "--seed", "4", "--quiet"]
WAIT_S = 120

# A generate.py run that stops for ten minutes once every packet has gone into the mp4, before its trailer is
# written and the file renamed, so the test can kill it with the partial file open. (The container opens its file
# at the first packet, which x264's lookahead holds back until the end of such a short video.) Test code only: the
# product has no such hook.
SLOW_WRITER = r"""
import sys, time
import ltx_mlx.media as media
real_write = media._write
def paused(*args):
    count = real_write(*args)
    time.sleep(600)
    return count
media._write = paused
from ltx_mlx.cli.generate import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    distilled, _, gemma, upsampler, _ = write_pipeline_checkpoints(tmp)
    return convert_folder(distilled, tmp / "distilled-mlx", gemma, upsampler)


def argv(model, out):
    return ["--model", str(model), "--prompt", PROMPT, "--output-path", str(out), *SMALL]


def frame_count(path) -> int:
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1
        return sum(1 for _ in c.decode(c.streams.video[0]))


def wait_for(proc, found, what):
    deadline = time.monotonic() + WAIT_S
    while not found(proc.pid):
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} after {WAIT_S} s"
        time.sleep(0.005)


def kill_when(args, found, what):
    """Start a child run, SIGKILL it as soon as `found(its pid)`; its pid."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proc, found, what)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def test_a_killed_run_leaves_only_its_lock_and_partial_and_the_next_run_cleans_them(model, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    lock = tmp_path / ".clip.mp4.lock"

    def partials(pid):
        return sorted(p.name for p in tmp_path.glob(f".clip.mp4.{pid}-*.partial"))

    # 1. The real generate.py, killed the moment it holds the path (before any model is loaded).
    pid = kill_when([str(ROOT / "generate.py"), *argv(model, out)], lambda _: lock.exists(), "lock file")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([lock.name, *partials(pid)])
    assert lock.read_text() in ("", str(pid))  # killed right after creating it, maybe before writing its pid

    # 2. Killed in the middle of writing the mp4: the dead run's lock is taken over, and the new run's partial file
    # is open when the kill comes.
    pid2 = kill_when(["-c", SLOW_WRITER, *argv(model, out)], lambda child: partials(child) != [], "partial mp4")
    assert not out.exists()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(partials(pid2)) == 1 and left == sorted([lock.name, *partials(pid2)]), left
    assert lock.read_text() == str(pid2)

    # 3. The next run to the same path removes the dead run's leftovers and writes a whole mp4.
    assert generate(argv(model, out)) == 0, capsys.readouterr().err
    assert frame_count(out) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


class FullDisk:
    """A PyAV output container whose `fail_at`-th packet write, or the trailer written at close ("trailer"), fails
    as a full disk does: av.error.OSError with errno ENOSPC, naming the file being written. The packet goes in
    first, so the file has been created (the container opens it at the first packet) when the error comes."""

    def __init__(self, container, fail_at):
        self.container, self.fail_at, self.packets = container, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.container, name)

    def full(self):
        return av.error.OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.container.name)

    def mux(self, packet):
        self.packets += 1
        self.container.mux(packet)
        if self.packets == self.fail_at:
            raise self.full()

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.container.close()
        if self.fail_at == "trailer" and kind is None:
            raise self.full()


def assert_disk_full_failure(rc, err, out):
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("generate.py: error: ") and "Traceback" not in err, err
    assert "the disk is full" in lines[0] and repr(str(out)) in lines[0] and ".partial" not in lines[0], lines[0]
    assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())  # no output, partial or lock file


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(model, tmp_path, monkeypatch, capsys):
    real_open = av.open
    for fail_at in (1, 6, "trailer"):  # the first packet, one among the video and audio packets, the trailer
        opened = []

        def open_full(file, mode="r", **kwargs):
            container = real_open(file, mode, **kwargs)
            if mode != "w":
                return container
            opened.append(FullDisk(container, fail_at))
            return opened[-1]

        out = tmp_path / str(fail_at) / "clip.mp4"
        out.parent.mkdir()
        with monkeypatch.context() as m:
            m.setattr(av, "open", open_full)
            rc = generate(argv(model, out))
        assert_disk_full_failure(rc, capsys.readouterr().err, out)
        assert len(opened) == 1 and opened[0].packets >= (1 if fail_at == "trailer" else fail_at), fail_at
        assert fail_at == "trailer" or opened[0].packets == fail_at  # nothing is muxed after the failed write

    # A real full disk: a tmpfs of two pages, room for the lock file but not for the mp4 (tens of KB; root only).
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mnt)],
                                                   capture_output=True).returncode == 0
    with capsys.disabled():
        print("real tmpfs:", "mounted" if mounted else "not available (not root, or mount refused): injected only")
    if mounted:
        try:
            out = mnt / "clip.mp4"
            assert_disk_full_failure(generate(argv(model, out)), capsys.readouterr().err, out)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    # the same run with room writes the whole mp4
    out = tmp_path / "room" / "clip.mp4"
    out.parent.mkdir()
    assert generate(argv(model, out)) == 0, capsys.readouterr().err
    assert frame_count(out) == 9 and out.stat().st_size > 8192
