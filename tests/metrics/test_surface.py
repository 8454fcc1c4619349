from __future__ import annotations

import numpy as np
import pytest
from metric_fixtures import cube

from nnunet_pde.metrics.surface import directed_surface_distances, surface_voxels


def test_cube_surface_is_its_shell():
    m = cube((12, 12, 12), (2, 3, 4), 6)
    s = surface_voxels(m)
    assert s.sum() == 6**3 - 4**3
    assert not (s & ~m).any()


def test_single_voxel_is_its_own_surface():
    m = np.zeros((5, 5, 5), dtype=bool)
    m[2, 2, 2] = True
    assert (surface_voxels(m) == m).all()


def test_foreground_on_the_image_border_is_surface():
    # Outside the image counts as background, so a full image is all surface on its faces.
    m = np.ones((6, 6, 6), dtype=bool)
    s = surface_voxels(m)
    assert s.sum() == 6**3 - 4**3


def test_face_connectivity_is_the_default():
    # With a corner voxel removed, its diagonal neighbour (3, 3, 3) still has all 6 face
    # neighbours (interior) but not all 26 (surface under connectivity 3).
    m = cube((9, 9, 9), (2, 2, 2), 5)
    m[2, 2, 2] = False  # a corner notch
    face = surface_voxels(m)
    full = surface_voxels(m, connectivity=3)
    assert face[3, 3, 3] == np.False_  # touches the notch only at a corner
    assert full[3, 3, 3] == np.True_


def test_empty_target_gives_inf_and_empty_source_gives_nothing():
    p = cube((8, 8, 8), (2, 2, 2), 3)
    r = np.zeros_like(p)
    d_pr, d_rp = directed_surface_distances(p, r, (1.0, 1.0, 1.0))
    assert d_pr.size == 26 and np.isinf(d_pr).all()
    assert d_rp.size == 0
    d_pr, d_rp = directed_surface_distances(r, r, (1.0, 1.0, 1.0))
    assert d_pr.size == 0 and d_rp.size == 0


def test_bad_inputs_are_rejected_with_a_message():
    m = np.zeros((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="same shape"):
        directed_surface_distances(m, np.zeros((4, 4, 5), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="one value per image axis"):
        directed_surface_distances(m, m, (1, 1))
    with pytest.raises(ValueError, match="> 0"):
        directed_surface_distances(m, m, (1, 0, 1))


def test_metrics_package_imports_neither_torch_nor_nnunetv2():
    import subprocess
    import sys

    code = (
        "import sys, nnunet_pde.metrics, nnunet_pde.metrics.evaluate; "
        "print(sorted(m for m in ('torch', 'nnunetv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
