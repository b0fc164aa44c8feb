"""Nothing lost, nothing mixed: a refused run touches nothing in output_dir, and one live run owns its folder
(sft/outputs/run_lock.py). Real `sft train` runs on the tiny Llama 3.2 Vision; the live run is a separate process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sft.cli import main as cli
from sft.config.recipe import load_recipe
from sft.errors import UserError
from sft.outputs.run_lock import LOCK_NAME
from sft.run.checkpoints import complete, resume_point
from sft.run.train import main as train
from tests.conftest import REPO
from tests.test_faults import SMOKE, sft_process, smoke_args, wait_for


def listing(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def trained_once(tiny_models, tmp_path_factory):
    """A 4-step run's folder: two checkpoints and its adapter (trained once for the module)."""
    root = tmp_path_factory.mktemp("earlier")
    out = root / "run"
    train(load_recipe(SMOKE, smoke_args(tiny_models, root, out, steps=4, save_steps=2)))
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    return out


@pytest.fixture
def earlier_run(trained_once, tmp_path):
    """An output_dir holding an earlier run (a copy of `trained_once`), and its files byte for byte."""
    out = tmp_path / "run"
    shutil.copytree(trained_once, out)
    return out, listing(out)


@pytest.mark.parametrize("refused_by, extra", [
    ("no row fits max_length", ["--max_length", "8", "--max_dropped_fraction", "1"]),
    ("chat_template_path", ["--chat_template_path", "missing.jinja"]),
    ("family", ["--family", "no_such_family"]),
    ("packing: not exact for family mllama on rows with images", ["--packing", "true"]),
])
def test_a_refused_run_with_overwrite_output_dir_touches_nothing(tiny_models, tmp_path, earlier_run, refused_by,
                                                                 extra):
    out, before = earlier_run
    args = smoke_args(tiny_models, tmp_path, out, steps=4) + ["--overwrite_output_dir", "true", *extra]
    with pytest.raises(UserError, match=refused_by):
        train(load_recipe(SMOKE, args))
    assert listing(out) == before  # every checkpoint and the adapter, byte for byte; no lock left behind


def test_overwrite_output_dir_removes_the_old_checkpoints_when_training_starts_and_says_which(
        tiny_models, tmp_path, earlier_run, capsys):
    out, _ = earlier_run
    train(load_recipe(SMOKE, smoke_args(tiny_models, tmp_path, out, steps=2)
                      + ["--overwrite_output_dir", "true", "--save_strategy", "no"]))
    assert "overwrite_output_dir: removed 2 old checkpoint(s) from " in capsys.readouterr().err
    assert not list(out.glob("checkpoint-*")) and not (out / LOCK_NAME).exists()


def test_a_refused_run_into_a_new_folder_leaves_no_folder(tiny_models, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(UserError, match="no row fits max_length"):
        train(load_recipe(SMOKE, smoke_args(tiny_models, tmp_path, out) + ["--max_length", "8",
                                                                           "--max_dropped_fraction", "1"]))
    assert not out.exists()


def test_one_live_run_per_folder(tiny_models, tmp_path, capsys):
    out, log_path = tmp_path / "run", tmp_path / "log.txt"
    args = smoke_args(tiny_models, tmp_path, out, steps=5000, save_steps=2)
    with open(log_path, "w") as log:
        live = sft_process(args, log)
        try:
            wait_for(lambda: (out / "checkpoint-2" / "trainer_state.json").is_file(), live)
            holder = json.loads((out / LOCK_NAME).read_text())
            assert holder["pid"] == live.pid and holder["host"] == socket.gethostname()
            held = rf"{out}: held by a live run, pid {live.pid} on {socket.gethostname()}, started "
            for more in (["--overwrite_output_dir", "true"], ["--resume_from_checkpoint", "true"]):
                with pytest.raises(UserError, match=held):
                    train(load_recipe(SMOKE, args + more))
            capsys.readouterr()
            for command in (["merge", "--run", str(out), "--out", str(tmp_path / "merged")],
                            ["export-adapter", "--run", str(out), "--out", str(tmp_path / "exported")],
                            ["predict", str(out)]):
                assert cli(command) == 2
                assert f"error: {out}: held by a live run, pid {live.pid}" in capsys.readouterr().err
        finally:
            live.send_signal(signal.SIGKILL)
            live.wait()
    assert (out / LOCK_NAME).is_file()  # SIGKILL leaves the lock; the next run sees its holder is gone
    capsys.readouterr()
    with pytest.raises(UserError, match="no row fits max_length"):  # it takes the folder, then stops on its data
        train(load_recipe(SMOKE, args + ["--resume_from_checkpoint", "true", "--max_length", "8",
                                         "--max_dropped_fraction", "1"]))
    err = capsys.readouterr().err
    assert f"{out / LOCK_NAME}: left by a process that is gone (pid {live.pid} on " in err
    assert not (out / LOCK_NAME).exists() and list(out.glob("checkpoint-*"))  # released; its checkpoints kept


def test_a_lock_from_another_host_is_never_taken_over(tiny_models, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "started": "then"}))
    with pytest.raises(UserError, match=rf"held by a run on another host \({out / LOCK_NAME}: remove it if that run "
                                        r"is gone\), pid \d+ on elsewhere"):
        train(load_recipe(SMOKE, smoke_args(tiny_models, tmp_path, out, steps=2)))
    assert (out / LOCK_NAME).is_file()


def test_only_global_rank_0_takes_the_lock(tiny_models, tmp_path, monkeypatch):
    from sft.outputs.run_lock import run_lock

    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path / "run"):
        assert not (tmp_path / "run").exists()


# ---- kills and full disks --------------------------------------------------------------------------------------
def test_resume_skips_a_half_written_checkpoint_and_says_so(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    args = smoke_args(tiny_models, tmp_path, out, steps=4, save_steps=2)
    train(load_recipe(SMOKE, args))
    cut = out / "checkpoint-4"  # as a SIGKILL in the middle of writing its last file leaves it
    state = (cut / "trainer_state.json").read_text()
    (cut / "trainer_state.json").write_text(state[: len(state) // 2])
    with pytest.raises(UserError, match=r"checkpoint-4: not a complete checkpoint"):
        train(load_recipe(SMOKE, args + ["--resume_from_checkpoint", str(cut)]))
    capsys.readouterr()
    train(load_recipe(SMOKE, args + ["--max_steps", "6", "--resume_from_checkpoint", "true"]))
    err = capsys.readouterr().err
    assert "resume: skipping checkpoint-4: half-written" in err
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6


def fill(folder) -> None:
    """Write into `folder` until its file system has no byte left."""
    with open(folder / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root only): a real full disk, where the machine allows mounting one."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_while_saving_is_one_line_and_the_last_complete_checkpoint_loads(tiny_models, tmp_path, small_disk):
    out, log_path = small_disk / "run", tmp_path / "log.txt"
    args = smoke_args(tiny_models, tmp_path, out, steps=5000, save_steps=2)
    with open(log_path, "w") as log:
        process = sft_process(args, log)
        wait_for(lambda: (out / "checkpoint-2" / "trainer_state.json").is_file(), process)
        fill(small_disk)
        process.wait(timeout=240)
    text = log_path.read_text()
    assert process.returncode == 2 and "Traceback" not in text
    errors = [line[line.index("error: "):] for line in text.splitlines() if "error: " in line]  # after tqdm's bar
    assert len(errors) == 1 and f"{out}: no space left on the device while saving at step " in errors[0]
    last = Path(errors[0].split("last complete checkpoint: ")[1].split(";")[0])
    assert last.parent == out and last.name.startswith("checkpoint-") and complete(last)
    assert load_file(last / "adapter_model.safetensors")  # the previous checkpoint loads
    assert resume_point(str(out), True)[0] == str(last)  # and is the one a resume takes


def test_sigkill_during_merge_leaves_no_folder_that_predict_would_load(trained_once, tmp_path):
    run, merged = tmp_path / "run", tmp_path / "merged"
    shutil.copytree(trained_once, run)
    # Killed at the worst moment, every file written and the folder not yet renamed into place: the process kills
    # itself there (polling for the moment from outside raced a tiny model's merge, which can finish between polls).
    killed_before_rename = (
        "import os, pathlib, signal, sys\n"
        "rename = pathlib.Path.rename\n"
        "def dying(self, target):\n"
        "    if '.partial-' in self.name:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return rename(self, target)\n"
        "pathlib.Path.rename = dying\n"
        "from sft.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    process = subprocess.run([sys.executable, "-c", killed_before_rename, "merge", "--run", str(run), "--out",
                              str(merged), "--dtype", "fp32"], cwd=REPO, capture_output=True, timeout=300)
    assert process.returncode == -9 and not merged.exists()
    assert list(tmp_path.glob(".merged.partial-*/*.safetensors"))  # it had written the weights
    assert cli(["predict", str(merged)]) == 2
