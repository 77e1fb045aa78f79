"""Train one variant of a run's model on that run's prepared inputs, printing every epoch as a JSON line.

    python benchmarks/fit_variants.py NAME --base RUN/config.json --splits SPLITS [--fold K]
        [--model '{"deep_supervision": 0}'] [--train '{"lr": 5e-4}'] [--augment '{"rotate": 0}']
        [--vit-from RUN --stage-two-only]

How the third round of "Learning small lesions" (benchmarks/README.md) was measured: the same splits, seed and
prepared grids as `train`, through the same `engine.fit`, with one setting changed at a time. --model, --train and
--augment update the base run's model, TrainConfig and AugmentConfig (a "name" other than the base model's
replaces the model config whole; "vit" and "cnn" update a hybrid's stages). --vit-from copies a trained hybrid's
ViT in, and --stage-two-only then trains the CNN stage alone on it. The grids are kept in SPLITS.<fold>.data.pt
after the first run, so run from the folder the splits file's paths are relative to, with PERCEIVER_MED_CACHE set
as for `train`. Runs go to /tmp/fit-variants/NAME; one thread (run two side by side on two cores).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--base", type=Path, required=True, help="config.json of the run to vary")
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--fold", type=int, default=None, help="train this cross-validation fold, as train --fold")
    parser.add_argument("--model", default="{}")
    parser.add_argument("--train", default="{}")
    parser.add_argument("--augment", default="{}")
    parser.add_argument("--vit-from", type=Path, help="a hybrid run whose trained ViT to start from")
    parser.add_argument("--stage-two-only", action="store_true", help="train only the hybrid's CNN stage")
    args = parser.parse_args()
    import torch

    from perceiver_med.models.weights import load_weights
    from perceiver_med.training import engine
    from perceiver_med.training.config import RunConfig
    from perceiver_med.inputs.loading import load_split_inputs
    from perceiver_med.models import build_model
    from perceiver_med.run.rundir import RunDir
    from perceiver_med.inputs.splits import fold_rows, read_sound_splits

    torch.set_num_threads(1)
    config = RunConfig.from_json(args.base.read_text())
    kept = args.splits.with_name(f"{args.splits.name}.{args.fold}.data.pt")
    if kept.exists():
        data = torch.load(kept)
    else:
        rows = read_sound_splits(args.splits)
        rows = fold_rows(rows, args.fold) if args.fold is not None else rows
        data = load_split_inputs(rows, config.preprocess).by_split(config.classes)
        torch.save(data, kept)
    model_config = dict(config.model)
    override = json.loads(args.model)
    if override.get("name", model_config["name"]) != model_config["name"]:
        model_config = {}
    for key, value in override.items():
        model_config[key] = {**model_config[key], **value} if key in ("vit", "cnn") else value
    train = replace(config.train, device="cpu", **json.loads(args.train))
    augment = replace(config.augment, **json.loads(args.augment))
    torch.manual_seed(train.seed)  # as runs._train: the same initial weights as the base run's
    model = build_model(model_config)
    if args.vit_from:
        donor = build_model(json.loads((args.vit_from / "config.json").read_text())["model"])
        load_weights(donor, args.vit_from / "model.safetensors")
        model.vit.load_state_dict(donor.vit.state_dict())
    if args.stage_two_only:  # a stage list without the ViT: fit trains the CNN stage on the given ViT
        stages_for = engine.stages_for
        engine.stages_for = lambda module, name: stages_for(module, name)[1:]
    out = Path("/tmp/fit-variants") / args.name
    out.mkdir(parents=True, exist_ok=True)

    class Lines(engine.Reporter):
        def epoch_end(self, row: dict) -> None:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    started = time.perf_counter()
    device = torch.device("cpu")
    processes = engine.Processes.start(device)
    try:
        engine.fit(model, model_config["name"], data, config.classes, train, augment, RunDir(out).fit_files, device, processes,
                   Lines())
    finally:
        processes.close()
    model.eval()
    scores, _ = engine.evaluate_forward(model.forward, data, config.classes, device, precision=train.precision)
    print(json.dumps({"name": args.name, "accuracy": {split: round(s["accuracy"], 4) for split, s in scores.items()},
                      "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
