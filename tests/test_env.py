"""`nnunet-pde env` and `nnunet-pde doctor`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from nnunet_pde.env import EXT_TRAINER_VAR, diagnose, export_lines, trainer_dir

CLI = [sys.executable, "-m", "nnunet_pde.cli"]
NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", EXT_TRAINER_VAR)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NNUNET_VARS}
    env.update(extra)
    return env


def test_trainer_dir_holds_the_trainer_modules():
    assert (trainer_dir() / "nnUNetTrainerPDE3D.py").is_file()


def test_export_lines_set_ext_trainer_and_unset_data_folders(tmp_path):
    lines = export_lines(environ={}, data_root=tmp_path)
    text = "\n".join(lines)
    assert f"export {EXT_TRAINER_VAR}={trainer_dir()}" in text
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert f"export {var}={tmp_path.resolve() / var}" in text


def test_export_lines_keep_what_the_user_already_set(tmp_path):
    other = str(tmp_path / "my_trainers")
    env = {EXT_TRAINER_VAR: other, "nnUNet_raw": "/data/raw"}
    text = "\n".join(export_lines(environ=env, data_root=tmp_path))
    assert f"export {EXT_TRAINER_VAR}={trainer_dir()}{os.pathsep}{other}" in text
    assert "export nnUNet_raw=" not in text
    # already present: nothing to add
    env = {EXT_TRAINER_VAR: f"{other}{os.pathsep}{trainer_dir()}"}
    assert not any(
        line.startswith(f"export {EXT_TRAINER_VAR}") for line in export_lines(environ=env)
    )


def test_eval_env_in_a_new_shell_lets_nnunet_resolve_the_trainer(tmp_path):
    """The issue's acceptance check: a new shell, `eval "$(nnunet-pde env)"`, then
    nnunetv2's own finder resolves nnUNetTrainerPDE3D."""
    script = (
        f'cd {tmp_path} && eval "$({" ".join(CLI)} env)" && '
        f'{sys.executable} -c "from nnunetv2.utilities.find_objects import '
        "recursive_find_trainer_class_by_name as f; "
        "print('FOUND', f('nnUNetTrainerPDE3D').__name__)\" "
        '&& echo "RAW=$nnUNet_raw"'
    )
    out = subprocess.run(
        ["bash", "-c", script], env=_clean_env(), capture_output=True, text=True, check=True
    ).stdout
    assert "FOUND nnUNetTrainerPDE3D" in out
    assert f"RAW={tmp_path.resolve() / 'nnUNet_data' / 'nnUNet_raw'}" in out


def test_doctor_reports_missing_ext_trainer_with_the_fix():
    proc = subprocess.run([*CLI, "doctor"], env=_clean_env(), capture_output=True, text=True)
    assert proc.returncode == 1
    assert "[FAIL]" in proc.stdout and f"{EXT_TRAINER_VAR} is not set" in proc.stdout
    assert 'eval "$(nnunet-pde env)"' in proc.stdout


def test_doctor_passes_in_a_complete_environment(tmp_path):
    env = _clean_env(**{EXT_TRAINER_VAR: str(trainer_dir())})
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        env[var] = str(tmp_path / var)
    proc = subprocess.run([*CLI, "doctor"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert "[FAIL]" not in proc.stdout
    assert "nnU-Net resolves all" in proc.stdout


def test_doctor_flags_a_stale_ext_trainer_path(tmp_path):
    checks = diagnose({EXT_TRAINER_VAR: str(tmp_path / "old_install" / "trainers")})
    fails = [c.what for c in checks if c.status == "fail"]
    assert any("does not contain" in w for w in fails)


def test_console_script_is_installed():
    exe = shutil.which("nnunet-pde", path=str(Path(sys.executable).parent))
    assert exe is not None, "the nnunet-pde console script is missing from the environment"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for sub in ("env", "doctor", "list-trainers", "make-dataset", "warmstart"):
        assert sub in out


def test_doctor_names_the_pde_kernel_backend_and_why(monkeypatch):
    monkeypatch.delenv("NNUNET_PDE_BACKEND", raising=False)
    lines = [c for c in diagnose({}) if c.what.startswith("PDE kernels")]
    assert lines and lines[0].status == "ok"
    assert "cpu: compiled C kernels" in lines[0].what or "cpu: torch (" in lines[0].what
    # a forced backend that cannot run is a failure with its reason and the fix
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("NNUNET_PDE_BACKEND", "triton")
    bad = [c for c in diagnose({}) if c.what.startswith("PDE kernels")][0]
    assert bad.status == "fail" and "TRITON_INTERPRET=1" in bad.what
    assert "NNUNET_PDE_BACKEND" in bad.fix
