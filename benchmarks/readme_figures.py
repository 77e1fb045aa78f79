"""The README's figures from a demo's output folder: the four evidence overlays side by side (docs/explain.png) and
the run's training curves (docs/curves.png).

    perceiver-med demo --out demo-output && python benchmarks/readme_figures.py demo-output
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="the folder `perceiver-med demo --out` wrote")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overlays = sorted((args.demo / "explain").glob("*.png"))
    if not overlays:
        raise SystemExit(f"no overlays in {args.demo / 'explain'}: run the demo first")
    figure, axes = plt.subplots(1, len(overlays), figsize=(4.2 * len(overlays), 4.6))
    for axis, path in zip(list(getattr(axes, "flat", [axes])), overlays):
        axis.imshow(plt.imread(path))
        axis.axis("off")
    figure.tight_layout()
    DOCS.mkdir(exist_ok=True)
    figure.savefig(DOCS / "explain.png", dpi=110)
    shutil.copyfile(args.demo / "run" / "curves.png", DOCS / "curves.png")
    print(f"wrote {DOCS / 'explain.png'} and {DOCS / 'curves.png'}")


if __name__ == "__main__":
    main()
