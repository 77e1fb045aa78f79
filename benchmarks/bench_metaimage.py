"""MetaImage reading against NIfTI: header discovery, a whole volume, and the 9 slices a point grid needs.

    python benchmarks/bench_metaimage.py [--slices 200] [--side 512] [--repeats 3] [--json metaimage.json]

One CT-like volume (int16 HU: a body, two lungs, noise) written as LUNA25 ships scans (.mha, zlib-compressed), as
LUNA16 does (.mhd + .raw), and as .nii.gz; each is discovered (headers only), read whole, and read for 9 slices in
its middle (what a point grid reads), the best of `--repeats` runs in seconds. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def volume(slices: int, side: int) -> np.ndarray:
    """(slices, rows, cols) int16 HU: air, a body ellipse, two lung ellipses, quantum noise of 20 HU."""
    y, x = np.mgrid[0:side, 0:side] / (side - 1) - 0.5
    plane = np.where((x / 0.45) ** 2 + (y / 0.35) ** 2 <= 1, 40.0, -1000.0)
    for centre in (-0.2, 0.2):
        plane[((x - centre) / 0.15) ** 2 + (y / 0.25) ** 2 <= 1] = -850.0
    rng = np.random.default_rng(0)
    return np.stack([plane + rng.normal(0, 20, plane.shape) for _ in range(slices)]).astype(np.int16)


def best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import SimpleITK as sitk

    from perceiver_med.io import discover, read_scan

    hu = volume(args.slices, args.side)
    middle = list(range(args.slices // 2 - 4, args.slices // 2 + 5))
    result = {"benchmark": "metaimage", "shape": list(hu.shape), "repeats": args.repeats, "seconds": {}}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        image = sitk.GetImageFromArray(hu)
        image.SetSpacing((0.7, 0.7, 1.25))
        sitk.WriteImage(image, str(folder / "v.mha"), useCompression=True)
        sitk.WriteImage(image, str(folder / "v.mhd"), useCompression=False)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), np.diag([-0.7, -0.7, 1.25, 1])),
                 folder / "v.nii.gz")
        for name in ("v.mha", "v.mhd", "v.nii.gz"):
            [scan] = discover(folder / name).scans
            whole = read_scan(scan).voxels
            some = read_scan(scan, lambda count: middle).voxels
            np.testing.assert_array_equal(some, whole[middle])
            result["seconds"][name] = {
                "discover (headers only)": best(lambda: discover(folder / name), args.repeats),
                "read whole": best(lambda: read_scan(scan), args.repeats),
                "read 9 middle slices": best(lambda: read_scan(scan, lambda count: middle), args.repeats),
                "file MB": round(sum(f.stat().st_size for f in scan.files) / 1e6, 1)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
