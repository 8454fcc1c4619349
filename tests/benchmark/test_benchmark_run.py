"""``benchmark run`` without training: commands, resume decisions, executors, manifest.

A stand-in for ``nnUNetv2_train`` (benchmark_fixtures.FAKE_TRAINER) writes what a finished
fold has, so the grid logic and the local executor run for real in a second.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchmark_fixtures import (
    CONF,
    DATASET,
    PLANS,
    read_calls,
    write_fake_checkpoint,
)

from nnunet_pde.benchmark.grid import ACTION_CONTINUE, ACTION_SKIP, ACTION_TRAIN, plan_grid
from nnunet_pde.benchmark.manifest import create_manifest_file
from nnunet_pde.benchmark.preflight import check_run_environment
from nnunet_pde.benchmark.run import run_benchmark
from nnunet_pde.commands import build_train_command
from nnunet_pde.errors import BenchmarkError
from nnunet_pde.executors import Job, LocalExecutor
from nnunet_pde.folders import (
    FOLD_FINISHED,
    FOLD_INTERRUPTED,
    FOLD_NEW,
    fold_state,
    resolve_dataset_name,
)
from nnunet_pde.slurm import job_environment, parse_time_minutes

T1, T2 = "nnUNetTrainerPDE3D_2epochs_4iters", "nnUNetTrainerPDE3D_Backbone_2epochs_4iters"


def _fold(env: dict[str, str], trainer: str, fold: int) -> Path:
    return Path(env["nnUNet_results"]) / DATASET / f"{trainer}__{PLANS}__{CONF}" / f"fold_{fold}"


def _make_fold(folder: Path, *files: str) -> None:
    for f in files:
        (folder / f).parent.mkdir(parents=True, exist_ok=True)
        if f.endswith(".pth"):
            write_fake_checkpoint(folder / f)
        else:
            (folder / f).write_bytes(b"x")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nnunet_pde.cli", "benchmark", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fold_state(tmp_path: Path) -> None:
    f = tmp_path / "fold_0"
    assert fold_state(f) == FOLD_NEW
    _make_fold(f, "training_log_2026.txt")
    assert fold_state(f) == FOLD_NEW  # a log alone: died before the first checkpoint
    _make_fold(f, "checkpoint_latest.pth")
    assert fold_state(f) == FOLD_INTERRUPTED
    (f / "checkpoint_latest.pth").unlink()
    _make_fold(f, "checkpoint_best.pth")
    assert fold_state(f) == FOLD_INTERRUPTED
    _make_fold(f, "checkpoint_final.pth")
    assert fold_state(f) == FOLD_INTERRUPTED  # trained, validation not finished
    _make_fold(f, "validation/summary.json")
    assert fold_state(f) == FOLD_FINISHED


def test_build_train_command() -> None:
    assert build_train_command(DATASET, CONF, 3, T1, PLANS) == (
        "nnUNetv2_train",
        DATASET,
        CONF,
        "3",
        "-tr",
        T1,
        "-p",
        PLANS,
    )
    cmd = build_train_command(
        "D", "3d_lowres", 0, "T", "P", device="cpu", continue_training=True, extra_args=["--npz"]
    )
    assert list(cmd) == [
        "nnUNetv2_train",
        "D",
        "3d_lowres",
        "0",
        "-tr",
        "T",
        "-p",
        "P",
        "-device",
        "cpu",
        "--c",
        "--npz",
    ]
    wrapped = build_train_command("D", "c", 1, "T", "P", train_command=["apptainer", "exec", "x"])
    assert wrapped[:4] == ("apptainer", "exec", "x", "D")


def test_plan_grid_skip_continue_train(fake_env: dict[str, str]) -> None:
    _make_fold(_fold(fake_env, T1, 0), "checkpoint_final.pth", "validation/summary.json")
    _make_fold(_fold(fake_env, T1, 1), "checkpoint_latest.pth")
    _make_fold(_fold(fake_env, T2, 0), "checkpoint_final.pth")  # validation missing
    tasks = plan_grid(
        fake_env["nnUNet_results"], DATASET, CONF, PLANS, [T1, T2], [0, 1], device="cpu"
    )
    got = {(t.trainer, t.fold): (t.action, t.state) for t in tasks}
    assert got == {
        (T1, 0): (ACTION_SKIP, FOLD_FINISHED),
        (T1, 1): (ACTION_CONTINUE, FOLD_INTERRUPTED),
        (T2, 0): (ACTION_CONTINUE, FOLD_INTERRUPTED),
        (T2, 1): (ACTION_TRAIN, FOLD_NEW),
    }
    by = {(t.trainer, t.fold): t for t in tasks}
    assert by[(T1, 0)].command == ()
    assert by[(T1, 1)].command[-1] == "--c"
    assert "--c" not in by[(T2, 1)].command
    assert [(t.trainer, t.fold) for t in tasks] == [(T1, 0), (T1, 1), (T2, 0), (T2, 1)]


def _tear(path: Path) -> None:
    """A checkpoint cut short, as a training stopped inside torch.save leaves it."""
    write_fake_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_torn_latest_checkpoint_is_planned_as_set_aside(fake_env: dict[str, str]) -> None:
    """checkpoint_latest.pth torn by a stopped training: continue from the best checkpoint,
    or train again without one; a torn best or final checkpoint still stops the run."""
    with_best, alone = _fold(fake_env, T1, 0), _fold(fake_env, T1, 1)
    _make_fold(with_best, "checkpoint_best.pth")
    _tear(with_best / "checkpoint_latest.pth")
    alone.mkdir(parents=True)
    _tear(alone / "checkpoint_latest.pth")
    tasks = plan_grid(fake_env["nnUNet_results"], DATASET, CONF, PLANS, [T1], [0, 1])
    got = {t.fold: (t.action, t.state, t.torn is not None) for t in tasks}
    assert got == {
        0: (ACTION_CONTINUE, FOLD_INTERRUPTED, True),
        1: (ACTION_TRAIN, FOLD_NEW, True),
    }
    assert "truncated" in (tasks[0].torn or "")
    assert tasks[0].command[-1] == "--c" and "--c" not in tasks[1].command
    # planning renames nothing
    assert (with_best / "checkpoint_latest.pth").is_file()

    _tear(with_best / "checkpoint_best.pth")
    with pytest.raises(BenchmarkError, match="checkpoint_best.pth does not load"):
        plan_grid(fake_env["nnUNet_results"], DATASET, CONF, PLANS, [T1], [0, 1])


def test_run_sets_a_torn_latest_checkpoint_aside_and_continues(fake_env: dict[str, str]) -> None:
    cmd = shlex.split(fake_env["FAKE_TRAIN_CMD"])
    folder = _fold(fake_env, T1, 0)
    _make_fold(folder, "checkpoint_best.pth")
    _tear(folder / "checkpoint_latest.pth")
    torn = (folder / "checkpoint_latest.pth").read_bytes()
    (folder / "checkpoint_latest.pth.torn").write_bytes(b"an earlier one")  # kept too

    lines: list[str] = []
    run_benchmark(
        "987", [T1], LocalExecutor(), folds=[0], device="cpu", train_command=cmd,
        environ=fake_env, print_fn=lines.append, dry_run=True,
    )  # fmt: skip
    assert f"# set aside {folder / 'checkpoint_latest.pth'}: it is truncated" in "\n".join(lines)
    assert (folder / "checkpoint_latest.pth").read_bytes() == torn  # a dry run moves nothing

    lines.clear()
    out = run_benchmark(
        "987", [T1], LocalExecutor(), folds=[0], device="cpu", train_command=cmd,
        environ=fake_env, print_fn=lines.append,
    )  # fmt: skip
    assert out.ok
    text = "\n".join(lines)
    assert "its training was stopped while writing it" in text
    assert f"Set aside as checkpoint_latest.pth.torn.1; {T1}/fold_0 continues from" in text
    # nothing lost: the torn file and the earlier one are both kept
    assert (folder / "checkpoint_latest.pth.torn.1").read_bytes() == torn
    assert (folder / "checkpoint_latest.pth.torn").read_bytes() == b"an earlier one"
    (call,) = read_calls(Path(fake_env["FAKE_TRAIN_CALLS"]))
    assert call[-1] == "--c"


def test_dry_run_prints_the_exact_commands(fake_env: dict[str, str]) -> None:
    _make_fold(_fold(fake_env, T1, 0), "checkpoint_final.pth", "validation/summary.json")
    _make_fold(_fold(fake_env, T2, 1), "checkpoint_best.pth")
    proc = _cli(
        ["run", "987", "--trainers", T1, T2, "--folds", "0", "1", "--device", "cpu", "--dry-run"],
        {**fake_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{fake_env['PATH']}"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"benchmark {DATASET} {CONF} -p {PLANS}: 2 trainer(s) x 2 fold(s)")
    assert "1 finished (skipped), 1 to continue (--c), 2 to train" in lines[0]
    base = f"nnUNetv2_train {DATASET} {CONF}"
    assert lines[1:] == [
        f"# skip {T1}/fold_0: finished ({_fold(fake_env, T1, 0)})",
        f"{base} 1 -tr {T1} -p {PLANS} -device cpu",
        f"{base} 0 -tr {T2} -p {PLANS} -device cpu",
        f"{base} 1 -tr {T2} -p {PLANS} -device cpu --c",
    ]
    # Nothing written: no manifest folder.
    assert not (Path(fake_env["nnUNet_results"]) / DATASET / "nnunet_pde_benchmark").exists()


def test_environment_errors(fake_env: dict[str, str], tmp_path: Path) -> None:
    bad = {k: v for k, v in fake_env.items() if k != "nnUNet_results"}
    with pytest.raises(BenchmarkError, match="nnUNet_results is not set"):
        check_run_environment("987", CONF, PLANS, bad)
    bad = {**fake_env, "nnUNet_extTrainer": ""}
    with pytest.raises(BenchmarkError, match="nnUNet_extTrainer is not set"):
        check_run_environment("987", CONF, PLANS, bad)
    bad = {**fake_env, "nnUNet_extTrainer": str(tmp_path)}
    with pytest.raises(BenchmarkError, match="does not list this install's trainers folder"):
        check_run_environment("987", CONF, PLANS, bad)
    with pytest.raises(BenchmarkError, match="no dataset with id 988"):
        check_run_environment("988", CONF, PLANS, fake_env)
    with pytest.raises(BenchmarkError, match="nnUNetResEncUNetMPlans.json does not exist"):
        check_run_environment("987", CONF, "nnUNetResEncUNetMPlans", fake_env)
    with pytest.raises(BenchmarkError, match="configuration '3d_lowres' is not in"):
        check_run_environment("987", "3d_lowres", PLANS, fake_env)
    with pytest.raises(BenchmarkError, match="is not on PATH"):
        check_run_environment("987", CONF, PLANS, fake_env, train_command=["no_such_cmd_xyz"])
    name, results, pre = check_run_environment(
        "987", CONF, PLANS, fake_env, train_command=[sys.executable]
    )
    assert name == DATASET and pre.name == DATASET
    assert resolve_dataset_name(DATASET, fake_env) == DATASET
    with pytest.raises(BenchmarkError, match="not an nnU-Net dataset name"):
        resolve_dataset_name("Dataset98_x", fake_env)


def test_cli_reports_bad_input_with_exit_code_2(fake_env: dict[str, str]) -> None:
    proc = _cli(["run", "987", "--trainers", T1, "--folds", "x"], fake_env)
    assert proc.returncode == 2 and "folds are integers" in proc.stderr
    proc = _cli(["run", "987", "--trainers", T1, "--partition", "gpu"], fake_env)
    assert proc.returncode == 2 and "--partition only apply to --executor slurm" in proc.stderr
    proc = _cli(["run", "987", "--trainers", T1, T1], fake_env)
    assert proc.returncode == 2 and "listed twice" in proc.stderr


def test_local_run_resume_and_manifest(fake_env: dict[str, str]) -> None:
    """Train a grid with the fake trainer, then rerun: skips finished, continues, retries."""
    cmd = shlex.split(fake_env["FAKE_TRAIN_CMD"])
    _make_fold(_fold(fake_env, T1, 1), "checkpoint_latest.pth")  # interrupted earlier
    fake_env["FAKE_TRAIN_FAIL"] = f"{T2}/fold_0"
    lines: list[str] = []
    out = run_benchmark(
        "987",
        [T1, T2],
        LocalExecutor(jobs=2),
        folds=[0, 1],
        device="cpu",
        extra_args=["--npz"],
        train_command=cmd,
        environ=fake_env,
        print_fn=lines.append,
    )
    calls = read_calls(Path(fake_env["FAKE_TRAIN_CALLS"]))
    assert sorted(calls) == sorted(
        [
            [DATASET, CONF, "0", "-tr", T1, "-p", PLANS, "-device", "cpu", "--npz"],
            [DATASET, CONF, "1", "-tr", T1, "-p", PLANS, "-device", "cpu", "--c", "--npz"],
            [DATASET, CONF, "0", "-tr", T2, "-p", PLANS, "-device", "cpu", "--npz"],
            [DATASET, CONF, "1", "-tr", T2, "-p", PLANS, "-device", "cpu", "--npz"],
        ]
    )
    assert sorted(out.succeeded) == [f"{T1}/fold_0", f"{T1}/fold_1", f"{T2}/fold_1"]
    assert out.failed == [f"{T2}/fold_0"] and not out.ok
    text = "\n".join(lines)
    assert f"FAILED {T2} fold 0" in text and "exit code 3" in text
    assert "summary:" in text and "FAILED: 1" in text and "logs:" in text

    m1 = json.loads(out.manifest.read_text())
    assert m1["status"] == "failed"
    assert m1["software"]["nnunetv2"] and m1["software"]["python"]
    assert m1["host"]["hostname"]
    assert m1["git"] is None or len(m1["git"]["commit"]) == 40
    jobs = {(j["trainer"], j["fold"]): j for j in m1["jobs"]}
    assert jobs[(T2, 0)]["returncode"] == 3 and jobs[(T2, 0)]["outcome"] == "failed"
    assert jobs[(T1, 1)]["action"] == "continue" and jobs[(T1, 1)]["command"][-2] == "--c"
    assert all(j["started"] and j["ended"] for j in m1["jobs"])
    log = Path(jobs[(T2, 0)]["log"]).read_text()
    assert "fake failure" in log and "exit code 3" in log

    # Second run: only the failed fold runs; a new manifest, the old one untouched.
    del fake_env["FAKE_TRAIN_FAIL"]
    before = out.manifest.read_text()
    time.sleep(0.01)
    out2 = run_benchmark(
        "987",
        [T1, T2],
        LocalExecutor(),
        folds=[0, 1],
        device="cpu",
        train_command=cmd,
        environ=fake_env,
        print_fn=lines.append,
    )
    assert out2.ok and out2.succeeded == [f"{T2}/fold_0"] and len(out2.skipped) == 3
    assert out2.manifest != out.manifest and out.manifest.read_text() == before
    assert len(read_calls(Path(fake_env["FAKE_TRAIN_CALLS"]))) == 5
    assert json.loads(out2.manifest.read_text())["status"] == "completed"

    # Third run: nothing to do.
    out3 = run_benchmark(
        "987", [T1, T2], LocalExecutor(), folds=[0, 1], train_command=cmd, environ=fake_env
    )
    assert out3.ok and len(out3.skipped) == 4 and not out3.results
    assert len(read_calls(Path(fake_env["FAKE_TRAIN_CALLS"]))) == 5


def test_killed_run_stops_its_trainings_and_resumes_with_c(fake_env: dict[str, str]) -> None:
    """SIGTERM to ``benchmark run`` stops the training it started; the rerun uses --c."""
    calls = Path(fake_env["FAKE_TRAIN_CALLS"])
    args = [
        "run",
        "987",
        "--trainers",
        T1,
        "--folds",
        "0",
        "--train-command",
        fake_env["FAKE_TRAIN_CMD"],
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnunet_pde.cli", "benchmark", *args],
        env={**fake_env, "FAKE_TRAIN_SLEEP": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    fold = _fold(fake_env, T1, 0)
    deadline = time.monotonic() + 60
    while not (fold / "checkpoint_latest.pth").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fold_state(fold) == FOLD_INTERRUPTED
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    assert time.monotonic() - t0 < 30
    assert "interrupted" in stdout and "interrupted or not started: 1" in stdout
    (manifest,) = (Path(fake_env["nnUNet_results"]) / DATASET / "nnunet_pde_benchmark").glob(
        "manifest_*.json"
    )
    m = json.loads(manifest.read_text())
    assert m["status"] == "interrupted" and m["jobs"][0]["outcome"] == "interrupted"
    log = Path(m["jobs"][0]["log"]).read_text()
    assert "exit code -15" in log  # the training itself got SIGTERM

    proc = _cli(args, fake_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/1] continue (--c)" in proc.stdout
    assert read_calls(calls)[-1][-1] == "--c"
    assert fold_state(fold) == FOLD_FINISHED


def test_exit_zero_without_finished_fold_is_a_failure(fake_env: dict[str, str]) -> None:
    out = run_benchmark(
        "987", [T1], LocalExecutor(), folds=[0], train_command=["true"], environ=fake_env
    )
    assert out.failed == [f"{T1}/fold_0"]
    job = json.loads(out.manifest.read_text())["jobs"][0]
    assert job["returncode"] == 0 and "no checkpoint_final.pth" in job["error"]


def test_manifest_names_never_collide(tmp_path: Path) -> None:
    paths = {create_manifest_file(tmp_path) for _ in range(3)}
    assert len(paths) == 3
    assert all(p.name.startswith("manifest_") and p.suffix == ".json" for p in paths)


def test_local_executor_interrupt_terminates_children(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to us) stops the running command, which a rerun continues with --c."""
    script = tmp_path / "drive.py"
    marker = tmp_path / "started"
    log = str(tmp_path / "a.log")
    script.write_text(
        "import signal, sys\n"
        "from pathlib import Path\n"
        "from nnunet_pde.commands import Job, LocalExecutor\n"
        # a test run started in the background (`cmd &`) inherits SIGINT ignored; a user's
        # Ctrl-C in a terminal is delivered, which is what this test is about
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"job = Job('a', ('bash', '-c', 'touch {marker}; sleep 60'), Path({log!r}))\n"
        "try:\n"
        "    LocalExecutor(grace_s=5).run([job])\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists()
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in stdout
    assert time.monotonic() - t0 < 20  # did not wait for the 60 s sleep
    assert "exit code -15" in (tmp_path / "a.log").read_text()


def test_local_executor_runs_jobs_in_parallel(tmp_path: Path) -> None:
    jobs = [Job(f"j{i}", ("bash", "-c", "sleep 1"), tmp_path / f"j{i}.log") for i in range(3)]
    t0 = time.monotonic()
    res = LocalExecutor(jobs=3).run(jobs)
    assert time.monotonic() - t0 < 2.5
    assert [r.returncode for r in res] == [0, 0, 0]
    missing = LocalExecutor().run([Job("x", ("no_such_cmd_xyz",), tmp_path / "x.log")])[0]
    assert missing.returncode is None and "cannot start" in missing.error


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("01:30:00", 90), ("1:30", 90), ("2-00:00:00", 2880), ("00:00:30", 1)],
)
def test_parse_time_minutes(text: str, minutes: int) -> None:
    assert parse_time_minutes(text) == minutes


def test_parse_time_minutes_rejects_garbage() -> None:
    with pytest.raises(BenchmarkError, match="--time"):
        parse_time_minutes("one hour")


def test_cuda_devices_are_shared_out_one_per_running_job(tmp_path: Path) -> None:
    jobs = [
        Job(
            f"j{i}",
            ("bash", "-c", "echo dev=$CUDA_VISIBLE_DEVICES; sleep 0.5"),
            tmp_path / f"{i}.log",
        )
        for i in range(4)
    ]
    ex = LocalExecutor(cuda_devices=["3", "5"])
    assert ex.jobs == 2
    res = ex.run(jobs)
    devices = [r.extra["cuda_visible_devices"] for r in res]
    assert sorted(devices) == ["3", "3", "5", "5"]
    for i, r in enumerate(res):
        assert f"dev={r.extra['cuda_visible_devices']}" in (tmp_path / f"{i}.log").read_text()
    with pytest.raises(BenchmarkError, match="twice"):
        LocalExecutor(cuda_devices=["0", "0"])


def test_slurm_job_environment_keeps_the_nodes_allocation() -> None:
    submitted = {"nnUNet_results": "/r", "PATH": "/venv/bin", "CUDA_VISIBLE_DEVICES": "0,1"}
    node = {"CUDA_VISIBLE_DEVICES": "2", "SLURM_JOB_ID": "7", "PATH": "/usr/bin"}
    env = job_environment(submitted, node)
    assert env == {
        "nnUNet_results": "/r",
        "PATH": "/venv/bin",
        "CUDA_VISIBLE_DEVICES": "2",
        "SLURM_JOB_ID": "7",
    }
    assert "CUDA_VISIBLE_DEVICES" not in job_environment(
        {"A": "1", "CUDA_VISIBLE_DEVICES": "0"}, {}
    )
    assert job_environment(None, node) is None


def test_local_executor_stops_a_command_started_while_it_was_being_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between Popen and the registration of the process: the worker stops it itself
    (otherwise the interrupted run would wait for the whole command)."""
    from nnunet_pde import executors

    ex = LocalExecutor(grace_s=5)
    real_popen = subprocess.Popen

    def popen_then_interrupt(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        ex._terminate_all()  # finds no registered process yet
        return proc

    monkeypatch.setattr(executors.subprocess, "Popen", popen_then_interrupt)
    job = Job("a", ("bash", "-c", "sleep 60"), tmp_path / "a.log")
    t0 = time.monotonic()
    (result,) = ex.run([job])
    assert time.monotonic() - t0 < 20
    assert result.returncode == -signal.SIGTERM and result.error == "interrupted"


def test_progress_line_from_an_nnunet_log():
    from nnunet_pde.benchmark.progress import format_progress, parse_training_log, planned_epochs

    log = "\n".join(
        [
            "2026-01-01 10:00:00.000000: Epoch 0",
            "2026-01-01 10:00:01.000000: Pseudo dice [np.float32(0.5), np.float32(0.25)]",
            "2026-01-01 10:00:01.000000: Epoch time: 40.0 s",
            "2026-01-01 10:00:02.000000: Epoch 1",
            "2026-01-01 10:00:03.000000: Pseudo dice [0.75, 0.5]",
            "2026-01-01 10:00:03.000000: Epoch time: 60.0 s",
            "2026-01-01 10:00:04.000000: Epoch 2",
        ]
    )
    progress = parse_training_log(log)
    assert progress is not None and progress.epoch == 2
    assert progress.pseudo_dice == (0.75, 0.5) and progress.epoch_time_s == 50.0
    assert format_progress(progress, 4) == (
        "epoch 3/4, pseudo Dice 0.750 0.500, 50.0 s/epoch, ETA 50 s"
    )
    assert parse_training_log("nothing yet") is None
    assert planned_epochs("nnUNetTrainer_250epochs", None) == 250
    assert planned_epochs("nnUNetTrainer", None) == 1000
