"""How each metric is shown: display name, decimals and which direction is better."""

from __future__ import annotations

__all__ = ["METRIC_INFO"]

#: Display name, decimals and direction of each metric.
METRIC_INFO: dict[str, tuple[str, int, str]] = {
    "dice": ("Dice", 4, "higher is better"),
    "hd95_mm": ("HD95 (mm)", 2, "lower is better"),
    "hausdorff_mm": ("HD (mm)", 2, "lower is better"),
    "assd_mm": ("ASSD (mm)", 2, "lower is better"),
    "nsd": ("NSD", 4, "higher is better"),
    "precision": ("Precision", 4, "higher is better"),
    "recall": ("Recall", 4, "higher is better"),
    "pred_volume_mm3": ("Predicted volume (mm³)", 0, ""),
    "ref_volume_mm3": ("Reference volume (mm³)", 0, ""),
}
