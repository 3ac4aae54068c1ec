"""Fault injection on real `cfrg run` processes: signals (SIGINT, SIGTERM, SIGKILL) at seeded random points of a
run, a full file system (a real tmpfs where this machine lets the test mount one, else an injected ENOSPC), and
an injected EIO. After each, the output folders are checked as units (sdk.run_unit): the complete unit is whole
(RUN.json's counts equal what is on disk, every mask and overlay belongs to a line of its verdicts.jsonl), an
incomplete one is marked, nothing is mixed, no hidden temporary file is left anywhere.

Runs are bounded: 8 signal runs of at most 160 frames, each with a 60 s timeout."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEMO_ROOT, ROOT

FRAMES = str(DEMO_ROOT / "ball_screw" / "test" / "*" / "*.jpg")  # 32 real images
SHIM = ROOT / "tests" / "fault_shim"
PASSES = 5  # the long source: each real image 5 times under its own name, 160 frames (a run of about 8 s)


@pytest.fixture(scope="module")
def long_source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for k, image in enumerate(sorted(DEMO_ROOT.glob("ball_screw/test/*/*.jpg"))):
        for n in range(PASSES):
            (folder / f"{n}_{k:03d}_{image.name}").symlink_to(image)
    return folder


def cfrg(*args, env=None, wait=True):
    cmd = [sys.executable, "-c", "import sys; from sdk.cli import main; sys.exit(main(sys.argv[1:]))", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})},  # SIGINT as a terminal gives it, even in a background job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def check_unit(folder: Path, complete: bool) -> dict:
    """The unit's RUN.json against its files; returns the state. Fails on any mix or hidden file."""
    state = json.loads((folder / "RUN.json").read_text())
    hidden = [p for p in folder.rglob(".*")]
    assert not hidden, hidden
    lines = (folder / "verdicts.jsonl").read_text().splitlines() if (folder / "verdicts.jsonl").exists() else []
    records = [json.loads(line) for line in lines if line.endswith("}")]
    ids = {f"{r['frame_id']:06d}" for r in records}
    for kind in ("masks", "overlays"):
        files = list((folder / kind).glob("*.png")) if (folder / kind).is_dir() else []
        assert {p.stem.rsplit("_", 1)[0] for p in files} <= ids, f"{kind} of another run in {folder}"
        if complete:
            assert len(files) == state["holds"][kind]
    if complete:
        assert state["status"] == "complete" and len(records) == state["holds"]["records"] == state["frames"]
    else:
        assert state["status"] in ("incomplete", "running")
    return state


@pytest.fixture()
def previous_run(exported_model, tmp_path):
    """A complete unit of 5 records in OUT, from an earlier run."""
    out = tmp_path / "out"
    code, _, err = cfrg("run", "--model", exported_model[1], "--source", FRAMES, "--out", out, "--max-frames", 5,
                        "--no-progress")
    assert code == 0, err
    return out


def test_signals_at_random_points_leave_whole_units_and_no_hidden_files(previous_run, exported_model, long_source,
                                                                         capsys):
    rng = random.Random(7)
    model, out = exported_model[1], previous_run
    interrupted = checked = lost_or_mixed = 0
    last_complete = check_unit(out, complete=True)["holds"]["records"]
    for k in range(8):
        sig = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL][k % 3]
        proc = cfrg("run", "--model", model, "--source", long_source, "--out", out, "--batch-size", 2,
                    "--no-progress", wait=False)
        time.sleep(rng.uniform(1.5, 6.0))  # the start (imports, model) takes about 2 s here
        finished_first = proc.poll() is not None
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        code = proc.returncode
        if not finished_first:
            interrupted += 1
        partial = out.with_name("out.incomplete")
        try:
            state = check_unit(out, complete=True)
            checked += 1
            if partial.exists():
                check_unit(partial, complete=False)
                checked += 1
            records = state["holds"]["records"]
            if code == 0:  # it finished before the signal: the new unit replaced the old one
                assert records == 32 * PASSES and not partial.exists()
            else:
                # a signal that came after the new unit replaced the old one (while the run exited) leaves the new one
                committed = records == 32 * PASSES and not partial.exists()
                assert records == last_complete or committed, "the previous complete unit changed"
                if sig != signal.SIGKILL and not committed:  # interrupted before its unit was complete
                    assert code == 130 and len(err.strip().splitlines()) <= 2 and "interrupted" in err, err
                    assert "partial output is in" in err or not partial.exists()
            last_complete = state["holds"]["records"]
        except AssertionError:
            lost_or_mixed += 1
            raise
        assert not list(out.parent.glob(".*")), "hidden file beside the units"
    with capsys.disabled():
        print(f"\nfault injection: {interrupted} runs interrupted, {checked} units checked, "
              f"{lost_or_mixed} with files lost or mixed")
    assert interrupted >= 5 and lost_or_mixed == 0


def _mount_tmpfs(folder: Path, size_kib: int) -> bool:
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("fault", ["full tmpfs", "ENOSPC injected", "EIO injected"])
def test_a_write_failure_is_exit_6_with_one_line_and_the_previous_unit_stays(exported_model, tmp_path, fault):
    disk = tmp_path / "disk"
    mounted = fault == "full tmpfs" and _mount_tmpfs(disk, 700)
    if fault == "full tmpfs" and not mounted:
        fault = "ENOSPC injected"  # no mount here (not root, or no permission): the same failure, injected
    disk.mkdir(exist_ok=True)
    try:
        out = disk / "out"
        code, _, err = cfrg("run", "--model", exported_model[1], "--source", FRAMES, "--out", out, "--max-frames", 3,
                            "--no-overlays", "--no-progress")
        assert code == 0, err
        env = {} if mounted else {"PYTHONPATH": f"{SHIM}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                                   "CFRG_FAULT_DIR": str(disk), "CFRG_FAULT_BYTES": "300000",
                                   "CFRG_FAULT_ERRNO": str(errno.EIO if fault == "EIO injected" else errno.ENOSPC)}
        code, stdout, err = cfrg("run", "--model", exported_model[1], "--source", FRAMES, "--out", out,
                                 "--no-progress", env=env)
        words = "Input/output error" if fault == "EIO injected" else "No space left on device"
        assert code == 6 and words in err and "wrote" not in stdout, (code, stdout, err)
        assert len([line for line in err.splitlines() if line.startswith("cfrg run: error")]) == 1
        assert "Traceback" not in err and "partial output is in" in err
        assert check_unit(out, complete=True)["holds"]["records"] == 3
        assert not list(disk.rglob(".*"))
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)
