"""Time one training iteration of every trainer, relative to nnUNetTrainerPDE3D_Backbone.

Each trainer is built through nnU-Net's own trainer class on a preprocessed dataset, its
data loader is started (augmentation in the main process), and ``train_step`` is timed on
real batches: loss, backward and optimiser step included. Trainers are measured in
interleaved rounds (every trainer once per round) so that load changes on the machine
affect all of them alike; the median over rounds is reported.

Example (CPU, after nnUNetv2_plan_and_preprocess of a synthetic dataset)::

    python scripts/benchmark_trainers.py 961 --rounds 5 --output trainer_times.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REFERENCE = "nnUNetTrainerPDE3D_Backbone"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", help="dataset id or name in $nnUNet_preprocessed")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument(
        "--trainers", nargs="+", default=None, help="default: every CPU-capable PDE3D trainer"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per trainer")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_pde.env import list_trainers
    from nnunet_pde.files import write_json

    pre = os.environ.get("nnUNet_preprocessed")
    if not pre or not os.environ.get("nnUNet_results"):
        print(
            'error: set nnUNet_preprocessed and nnUNet_results (eval "$(nnunet-pde env)")',
            file=sys.stderr,
        )
        return 2
    if args.output is not None and args.output.exists():
        print(f"error: {args.output} exists; choose another --output", file=sys.stderr)
        return 2
    os.environ["nnUNet_n_proc_DA"] = "0"
    folder = Path(pre) / maybe_convert_to_dataset_name(args.dataset)
    plans_file, ds_file = folder / f"{args.plans}.json", folder / "dataset.json"
    all_trainers = list_trainers()
    names = args.trainers or sorted(
        n
        for n in all_trainers
        if n.startswith("nnUNetTrainerPDE3D")
        and "Benchmark" not in n
        and not any(s in n for s in ("epoch", "iters", "Demo"))
    )
    unknown = [n for n in names if n not in all_trainers]
    if unknown:
        print(f"error: unknown trainers {unknown}; see `nnunet-pde list-trainers`", file=sys.stderr)
        return 2
    if REFERENCE not in names:
        names.append(REFERENCE)

    device = torch.device(args.device)
    trainers = {}
    for name in names:
        plans = load_json(str(plans_file))
        plans["continue_training"] = False
        t = all_trainers[name](plans, args.configuration, 0, load_json(str(ds_file)), device)
        t.on_train_start()
        t.on_epoch_start()
        t.on_train_epoch_start()
        for _ in range(args.warmup):
            t.train_step(next(t.dataloader_train))
        trainers[name] = t
        print(f"built {name}", flush=True)

    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name, t in trainers.items():
            batch = next(t.dataloader_train)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            t.train_step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    ref = statistics.median(times[REFERENCE])
    rows = {
        n: {
            "median_s": statistics.median(v),
            "ratio_vs_backbone": statistics.median(v) / ref,
            "times_s": v,
        }
        for n, v in times.items()
    }
    width = max(len(n) for n in names)
    print(f"\n{'trainer':<{width}}  s/iteration  x {REFERENCE}")
    for n in sorted(rows, key=lambda k: rows[k]["ratio_vs_backbone"]):
        print(f"{n:<{width}}  {rows[n]['median_s']:11.3f}  {rows[n]['ratio_vs_backbone']:6.2f}")
    if args.output is not None:
        document = {"device": str(device), "dataset": folder.name, "rounds": args.rounds}
        write_json(args.output, {**document, "trainers": rows}, indent=1)
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
