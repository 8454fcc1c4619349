"""Show that the numerical tests catch the mutations a review of the PDE layer named.

Each mutation is a one-line textual change to a copy of ``nnunet_pde/`` (the repository is
never modified). For each, the named tests run against the mutated copy (``PYTHONPATH``
points at it) and must FAIL; they must pass on the unmodified copy. Prints one line per
mutation and exits non-zero if any mutation survives.

    python scripts/check_mutations.py            # all mutations, ~3 min on 2 cores
    python scripts/check_mutations.py --list     # what would be applied
    python scripts/check_mutations.py -k Triton  # only those whose name contains "Triton"

Mutations run ``--jobs`` at a time (default 2), each worker on its own copy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids relative to the repository


MUTATIONS = (
    Mutation(
        "red-black Gauss-Seidel turned into Jacobi",
        "nnunet_pde/pde/solvers.py",
        "    v = torch.where(red, jacobi_sweep(v, b, weights, denom, tau), v)\n",
        "    v0 = v\n    v = torch.where(red, jacobi_sweep(v0, b, weights, denom, tau), v)\n"
        "    return torch.where(red, v, jacobi_sweep(v0, b, weights, denom, tau))\n",
        ("tests/pde/test_pde_solvers.py::test_red_black_gauss_seidel_equals_sequential_reference",),
    ),
    Mutation(
        "explicit half of Crank-Nicolson dropped",
        "nnunet_pde/pde/solvers.py",
        "        if theta < 1.0:\n            rhs =",
        "        if False:\n            rhs =",
        (
            "tests/pde/test_pde_solvers.py::test_aos_step_equals_sparse_direct_solve_of_the_split_system",
        ),
    ),
    Mutation(
        "exact solve replaced by one Jacobi-like sweep",
        "nnunet_pde/pde/tridiagonal.py",
        "    return TridiagonalSolve.apply(a0, b0).movedim(0, dim)",
        "    return (b0 / (1.0 + torch.nn.functional.pad(a0, (0,) * (2 * (a0.ndim - 1)) + (1, 0))"
        " + torch.nn.functional.pad(a0, (0,) * (2 * (a0.ndim - 1)) + (0, 1)))).movedim(0, dim)",
        (
            "tests/pde/test_pde_solvers.py::test_aos_step_equals_sparse_direct_solve_of_the_split_system",
        ),
    ),
    Mutation(
        "every block given the plans' (full-resolution) spacing",
        "nnunet_pde/network.py",
        "        block = PDEBlock(int(channels[s]), spacings[s], config)",
        "        block = PDEBlock(int(channels[s]), spacings[0], config)",
        (
            "tests/test_network.py::"
            "test_every_block_gets_its_own_stage_spacing_with_anisotropic_strides",
        ),
    ),
    Mutation(
        "TV ignore mask without the forward-neighbour check",
        "nnunet_pde/losses.py",
        "        ok = ok & v[tuple(hi)]",
        "        ok = ok",
        ("tests/test_losses.py::test_tv_with_a_single_ignored_voxel_matches_a_reference",),
    ),
    Mutation(
        "cosine schedule inverted",
        "nnunet_pde/training/schedulers.py",
        "0.5 * (1.0 + math.cos(math.pi * t))",
        "0.5 * (1.0 - math.cos(math.pi * t))",
        ("tests/training/test_schedulers.py::test_learning_rate_at_known_epochs",),
    ),
    Mutation(
        "fused C kernel: back substitution of the Thomas solve dropped",
        "nnunet_pde/pde/csrc/aos_impl.h",
        "        yn = y[i] + c[i] * yn;",
        "        yn = y[i] + 0 * c[i] * yn;",
        (
            "tests/pde/test_pde_fused.py::test_compiled_kernels_equal_the_torch_implementation",
            "tests/pde/test_pde_fused.py::test_fused_block_equals_reference_implementation",
        ),
    ),
    Mutation(
        "fused C backward: the explicit half's part of the face-weight gradient dropped",
        "nnunet_pde/pde/csrc/aos_impl.h",
        "        if (explicit_half) gphi += vce * mu * dl;",
        "        if (explicit_half) gphi += 0 * vce * mu * dl;",
        ("tests/pde/test_pde_fused.py::test_fused_step_gradcheck",),
    ),
    Mutation(
        "fused C reaction backward: the tanh derivative (1 - h^2) dropped",
        "nnunet_pde/pde/csrc/mlp_impl.h",
        "                GPv[k * vs + s] *= one - h * h;",
        "                GPv[k * vs + s] *= one;",
        ("tests/pde/test_pde_fused.py::test_reaction_kernels_equal_the_torch_implementation",),
    ),
    Mutation(
        "fused C weight gradients: lane sums of a 4 x 4 block read in the wrong order",
        "nnunet_pde/pde/csrc/mlp.c",
        "static const int rev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};",
        "static const int rev[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};",
        ("tests/pde/test_pde_fused.py::test_reaction_kernels_equal_the_torch_implementation",),
    ),
    Mutation(
        "fused C reaction backward: dL/dtau without the output bias's part (b2 sum gb)",
        "nnunet_pde/pde/csrc/mlp_impl.h",
        "        double nt = (double)b2[c] * sgb[c];",
        "        double nt = 0;",
        ("tests/pde/test_pde_fused.py::test_reaction_kernels_equal_the_torch_implementation",),
    ),
    Mutation(
        "fused C gated residual: the gate's gradient of u_hat dropped where the regulariser's is",
        "nnunet_pde/pde/csrc/aos_impl.h",
        "                const V o = (gi - m1 - ((zi - mu) * is) * m2) * is + c * q;",
        "                const V o = (gi - m1 - ((zi - mu) * is) * m2) * is;",
        ("tests/pde/test_pde_fused.py::test_gate_gradcheck_and_formula",),
    ),
    Mutation(
        "fused block: the step gradients written into the buffer they read (one scratch slot)",
        "nnunet_pde/pde/fused.py",
        '        slots = ("fused_block_g0", "fused_block_g1")',
        '        slots = ("fused_block_g0", "fused_block_g0")',
        (
            "tests/pde/test_pde_fused.py::test_fused_block_function_gradcheck",
            "tests/pde/test_pde_fused.py::test_fused_block_equals_reference_implementation",
        ),
    ),
    Mutation(
        "fused block: the gate's direct (1 - gamma) dL/dy dropped from dL/dx",
        "nnunet_pde/pde/fused.py",
        "        dx = standardise_grad(x_hat, std, g_u, gmean, gstd, gy.contiguous(), a)",
        "        dx = standardise_grad(x_hat, std, g_u, gmean, gstd, None, None)",
        ("tests/pde/test_pde_fused.py::test_fused_block_function_gradcheck",),
    ),
    Mutation(
        "fused C last-axis panels: one stage of the 16 x 16 transpose with a wrong mask",
        "nnunet_pde/pde/csrc/common.h",
        "#define LO2 ((vi32){0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29})",
        "#define LO2 ((vi32){0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 29, 28})",
        ("tests/pde/test_pde_fused.py::test_compiled_kernels_equal_the_torch_implementation",),
    ),
    Mutation(
        "Triton forward: the elimination forgets the previous row",
        "nnunet_pde/pde/kernels/triton_aos.py",
        "            y_prev = (rhs + a_prev * y_prev) / piv",
        "            y_prev = rhs / piv",
        (
            "tests/pde/test_kernels_triton.py::test_triton_step_equals_autograd_of_the_torch_reference",
        ),
    ),
    Mutation(
        "Triton: the explicit half's flux difference loses its left face",
        "nnunet_pde/pde/kernels/triton_aos.py",
        "            rhs += tl.load(ce_ptr + c).to(u_cur.dtype) * (flux - f_prev)",
        "            rhs += tl.load(ce_ptr + c).to(u_cur.dtype) * flux",
        (
            "tests/pde/test_kernels_triton.py::test_triton_step_equals_autograd_of_the_torch_reference",
        ),
    ),
    Mutation(
        "Triton backward: the adjoint elimination forgets the previous row",
        "nnunet_pde/pde/kernels/triton_aos.py",
        "            yl = (gm + a_prev * yl) / piv",
        "            yl = gm / piv",
        (
            "tests/pde/test_kernels_triton.py::test_triton_step_equals_autograd_of_the_torch_reference",
        ),
    ),
    Mutation(
        "Triton backward: the right face's dL/ddelta carried with the wrong sign",
        "nnunet_pde/pde/kernels/triton_aos.py",
        "            carry = -gdelta",
        "            carry = gdelta",
        (
            "tests/pde/test_kernels_triton.py::test_triton_step_equals_autograd_of_the_torch_reference",
        ),
    ),
    Mutation(
        "Triton backward: dL/dk summed without delta",
        "nnunet_pde/pde/kernels/triton_aos.py",
        "                s_k += delta * gs",
        "                s_k += gs",
        (
            "tests/pde/test_kernels_triton.py::test_triton_step_equals_autograd_of_the_torch_reference",
        ),
    ),
    Mutation(
        "Triton backward: dL/db of the later axes overwrites the earlier ones",
        "nnunet_pde/pde/kernels/triton_aos.py",
        "            gb += tl.load(gb_ptr + off, mask=mask, other=0.0).to(gb.dtype)",
        "            gb += 0.0",
        (
            "tests/pde/test_kernels_triton.py::test_triton_step_equals_autograd_of_the_torch_reference",
            "tests/pde/test_kernels_triton.py::test_block_on_triton_equals_block_on_torch",
        ),
    ),
    Mutation(
        "Triton standardisation: the variance summed without centring",
        "nnunet_pde/pde/kernels/triton_tail.py",
        "            d = tl.load(p_ptr + base + i, mask=i < hi, other=0.0).to(tl.float64) - mu",
        "            d = tl.load(p_ptr + base + i, mask=i < hi, other=0.0).to(tl.float64)",
        (
            "tests/pde/test_kernels_triton_tail.py::test_standardise_forward_and_backward[chunks-shape0]",
        ),
    ),
    Mutation(
        "Triton statistics: the chunks combined without the spread of their means",
        "nnunet_pde/pde/kernels/triton_tail.py",
        "            q += tl.where(kk < nchunk, m2 + n * d * d, 0.0)",
        "            q += tl.where(kk < nchunk, m2, 0.0)",
        (
            "tests/pde/test_kernels_triton_tail.py::test_standardise_forward_and_backward[chunks-shape0]",
        ),
    ),
    Mutation(
        "Triton standardisation backward: the x_hat mean(g x_hat) term dropped",
        "nnunet_pde/pde/kernels/triton_tail.py",
        "            dx = (g - m1 - xh * m2) * inv + c0 + c1 * xh + a * gy",
        "            dx = (g - m1) * inv + c0 + c1 * xh + a * gy",
        (
            "tests/pde/test_kernels_triton_tail.py::test_standardise_forward_and_backward[chunks-shape0]",
        ),
    ),
    Mutation(
        "Triton gate: the mean term of y dropped",
        "nnunet_pde/pde/kernels/triton_tail.py",
        "(a * x + (c + g * u)).to(y_ptr.dtype.element_ty)",
        "(a * x + g * u).to(y_ptr.dtype.element_ty)",
        (
            "tests/pde/test_kernels_triton_tail.py::test_tail_forward_and_backward[chunks-gate-shape0]",
        ),
    ),
    Mutation(
        "Triton energy backward: the left face of each cell left out",
        "nnunet_pde/pde/kernels/triton_tail.py",
        "        return ql - qr",
        "        return -qr",
        (
            "tests/pde/test_kernels_triton_tail.py::test_tail_forward_and_backward[chunks-energy-shape0]",
        ),
    ),
    Mutation(
        "Triton reaction backward: tanh's derivative dropped",
        "nnunet_pde/pde/kernels/triton_reaction.py",
        "        gpre = gh * (1.0 - h * h)",
        "        gpre = gh",
        (
            "tests/pde/test_kernels_triton_tail.py::test_response_forward_and_backward[tile-3-shape0]",
        ),
    ),
    Mutation(
        "Triton partial sums: only the first program's reaction gradients summed",
        "nnunet_pde/pde/kernels/triton_reaction.py",
        "        for row in range(R):",
        "        for row in range(1):",
        (
            "tests/pde/test_kernels_triton_tail.py::test_response_forward_and_backward[tile-3-shape0]",
        ),
    ),
    Mutation(
        "Triton partial sums: the AOS gradients of the first sample only",
        "nnunet_pde/pde/kernels/triton_reaction.py",
        "        for b in range(B):",
        "        for b in range(1):",
        (
            "tests/pde/test_kernels_triton.py::"
            "test_block_on_triton_equals_block_on_torch[diffusion-semi_implicit-r1]",
        ),
    ),
    Mutation(
        "Triton partial sums: the previous steps' gradients not accumulated",
        "nnunet_pde/pde/kernels/triton_reaction.py",
        "            acc += tl.load(acc_ptr + j, mask=j < na + NR, other=0.0).to(cdt)",
        "            acc += 0.0 * tl.load(acc_ptr + j, mask=j < na + NR, other=0.0).to(cdt)",
        (
            "tests/pde/test_kernels_triton_tail.py::test_step_backward_accumulates_the_gradients_of_the_steps",
        ),
    ),
    Mutation(
        "Triton parameters: the bounded step's dependence on alpha left out of dL/dalpha",
        "nnunet_pde/pde/kernels/triton_reaction.py",
        "        galpha += gts * (-tau * tau * R / (den * den))",
        "        galpha += 0.0 * gts",
        (
            "tests/pde/test_kernels_triton_tail.py::test_coefficients_forward_and_backward[kappa-crank-nicolson]",
        ),
    ),
    Mutation(
        "torch cyclic reduction: row i + s left out of the reduced right-hand side",
        "nnunet_pde/pde/tridiagonal.py",
        "        r = r + alpha * _before(r, s, pad0) + beta * _after(r, s, pad0)",
        "        r = r + alpha * _before(r, s, pad0)",
        ("tests/pde/test_kernels_torch.py::test_cyclic_reduction_equals_a_sparse_direct_solve",),
    ),
    Mutation(
        "C kernel cache: a cached library loaded without its checksum check",
        "nnunet_pde/pde/kernels/cpu_build.py",
        "            if not intact(target):",
        "            if not target.exists():",
        ("tests/pde/test_pde_fused.py::test_a_damaged_cached_library_is_rebuilt_not_loaded",),
    ),
    Mutation(
        "kernel spec: a fake output of the wrong shape (the gate's sums declared (B, C, 2))",
        "nnunet_pde/pde/kernels/spec.py",
        '_GATE_SUMS = Out("S", "B C 3", "float64")',
        '_GATE_SUMS = Out("S", "B C 2", "float64")',
        ("tests/pde/test_kernels_triton.py::test_opcheck_every_kernel_op",),
    ),
    Mutation(
        "kernel spec: a dimension bound twice not compared (any b passes the AOS check)",
        "nnunet_pde/pde/kernels/spec.py",
        "        if want != size:",
        "        if False:",
        ("tests/pde/test_kernels_spec.py::test_the_check_names_what_does_not_fit",),
    ),
    Mutation(
        "C prototypes: a double argument passed as a float (ctypes)",
        "nnunet_pde/pde/kernels/cpu_build.py",
        '"double": ctypes.c_double}',
        '"double": ctypes.c_float}',
        ("tests/pde/test_kernels_spec.py::test_ctypes_argument_types_come_from_the_c_prototypes",),
    ),
    Mutation(
        "image integrity: a NIfTI shorter than its header announces passes",
        "nnunet_pde/files.py",
        "        if end is not None and size < end:",
        "        if end is not None and size < 0:",
        (
            "tests/metrics/test_damaged_images.py::"
            "test_uncompressed_and_recompressed_short_niftis_are_refused",
        ),
    ),
    Mutation(
        "evaluate: the origin compared with itself (a shifted prediction scored)",
        "nnunet_pde/metrics/label_maps.py",
        "        p.origin, r.origin, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL",
        "        p.origin, p.origin, rtol=GEOMETRY_RTOL, atol=GEOMETRY_ATOL",
        ("tests/metrics/test_damaged_images.py::test_a_shifted_prediction_is_refused",),
    ),
    Mutation(
        "benchmark report: an unfinished fold pooled",
        "nnunet_pde/benchmark/pooling.py",
        "        if fold_state(folder) != FOLD_FINISHED:",
        "        if False:",
        ("tests/benchmark/test_benchmark_report.py::test_an_unfinished_fold_is_never_pooled",),
    ),
    Mutation(
        "repeated runs: the difference's SE without the reference's spread",
        "nnunet_pde/benchmark/runs.py",
        "sd**2 / v.size + ref_sd**2 / ref_vals.size",
        "sd**2 / v.size",
        (
            "tests/benchmark/test_benchmark_runs.py::"
            "test_report_pools_the_runs_and_reports_the_spread",
        ),
    ),
    Mutation(
        "PDE parameter group: its lr_scale ignored by the schedule",
        "nnunet_pde/training/schedulers.py",
        'group["lr"] = lr * group.get("lr_scale", 1.0)',
        'group["lr"] = lr',
        (
            "tests/test_gate_candidates.py::"
            "test_pde_group_gets_ten_times_the_lr_at_every_epoch_and_no_decay",
        ),
    ),
    Mutation(
        "gate_scale ignored by the block",
        "nnunet_pde/pde/block.py",
        "return self.gamma if scale == 1.0 else self.gamma * scale",
        "return self.gamma",
        (
            "tests/test_gate_candidates.py::"
            "test_scaled_gate_equals_a_plain_gate_ten_times_larger[c]",
        ),
    ),
)


def _copy_tree(dst: Path) -> None:
    """nnunet_pde/ with trainers/ inside (the wheel layout) and tests/."""
    shutil.copytree(
        REPO / "nnunet_pde", dst / "nnunet_pde", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        REPO / "trainers",
        dst / "nnunet_pde" / "trainers",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copytree(REPO / "tests", dst / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")


def _pytest(root: Path, tests: tuple[str, ...]) -> bool:
    """True if the tests pass when run against the copy in ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    basetemp = root / ".pytest_tmp"  # per copy: parallel runs never share pytest's tmp dirs
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            f"--basetemp={basetemp}",
            *tests,
        ],  # fmt: skip
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


def _apply(root: Path, m: Mutation, baseline_ok: bool) -> tuple[bool, str]:
    """Apply ``m`` to the copy in ``root``, run its tests, restore; (caught, report line)."""
    path = root / m.file
    original = path.read_text()
    if original.count(m.old) != 1:
        return _report(False, f"ERROR  {m.name}: the text to mutate is not found once in {m.file}")
    if not baseline_ok and not _pytest(root, m.tests):
        return _report(False, f"ERROR  {m.name}: {m.tests} fail on the unmodified code")
    path.write_text(original.replace(m.old, m.new))
    try:
        caught = not _pytest(root, m.tests)
    finally:
        path.write_text(original)
    status = "caught" if caught else "SURVIVED"
    return _report(
        caught, f"{status:8s} {m.name}  <-  {', '.join(t.split('::')[-1] for t in m.tests)}"
    )


def _report(caught: bool, line: str) -> tuple[bool, str]:
    """Print one mutation's line as soon as it is known (progress) and pass it on."""
    print(line, flush=True)
    return caught, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument(
        "-k",
        dest="only",
        default=None,
        help="run only the mutations whose name contains this text",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="mutations at once, each on its own copy of the code (default 2)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}: {m.file}: {m.tests[0]}")
        return 0
    mutations = [m for m in MUTATIONS if args.only is None or args.only in m.name]
    jobs = max(1, min(args.jobs, len(mutations)))
    with tempfile.TemporaryDirectory(prefix="nnunet_pde_mutations_") as tmp:
        roots = [Path(tmp) / f"copy{i}" for i in range(jobs)]
        for root in roots:
            _copy_tree(root)
        # The unmodified code must pass every test: one pytest run for all of them (one
        # interpreter start instead of one per mutation); only if it fails, one per mutation.
        all_tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
        baseline_ok = _pytest(roots[0], all_tests)
        # Worker i applies mutations i, i + jobs, ... to its own copy, one at a time.
        chunks = [mutations[i::jobs] for i in range(jobs)]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = pool.map(
                lambda i: [_apply(roots[i], m, baseline_ok) for m in chunks[i]], range(jobs)
            )
            outcome = {
                m.name: r
                for i, results in enumerate(done)
                for m, r in zip(chunks[i], results, strict=True)
            }
    survived = sum(not outcome[m.name][0] for m in mutations)
    print(f"summary: {len(mutations) - survived} of {len(mutations)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
