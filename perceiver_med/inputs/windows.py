"""Intensity windows: how a scan's values become [0, 1] (PreprocessConfig.window, the --window option).

"auto" (the default) decides by what the scan is:
- a CT volume, or a volume without a modality whose values look like HU (air near -1000): the lung window,
  HU -1000..400 (LUNA16's clip range), whatever the input layout;
- any other volume (MR, PT, NM, ...): the 0.5th..99.5th percentiles of the volume's own values. MR signal has
  no absolute scale and PET counts depend on dose and time, so a fixed window would clip one scan to white and
  leave the next one grey; percentiles keep each scan's contrast;
- a 2D image: its DICOM VOI transform (VOI LUT Sequence, or Window Center/Width with VOI LUT Function LINEAR,
  LINEAR_EXACT or SIGMOID, through pydicom's apply_voi_lut), else the image's own 0.5th..99.5th percentiles.

A preset names a fixed CT window in HU; "LOW,HIGH" is a fixed window in the scan's own units; "percentile"
uses percentiles for every scan, CT included.

Percentiles of a volume are taken over up to STATISTICS_SLICES slices spread evenly over the whole volume, not
over the slices a model input shows: every sample of one scan (grids at different centres, points) then maps
the same tissue to the same value, and a grid of near-empty slices (the top of the head) is not stretched
to full contrast. Spread slices rather than all of them, so that a grid still decodes tens of slices, not
hundreds; a volume of up to STATISTICS_SLICES slices uses them all.
"""
from __future__ import annotations

import numpy as np

from perceiver_med.errors import ScanError, UserError

# (low, high) in HU; named by their usual (width, level): lung W1400/L-300, mediastinum W400/L40,
# soft tissue W350/L50, bone W1800/L400, brain W80/L40.
PRESETS = {
    "lung": (-1000.0, 400.0),
    "mediastinum": (-160.0, 240.0),
    "soft-tissue": (-125.0, 225.0),
    "bone": (-500.0, 1300.0),
    "brain": (0.0, 80.0),
}
MODES = ("auto", "percentile")
PERCENTILES = (0.5, 99.5)
STATISTICS_SLICES = 32
# Volumes without a (specific) modality are treated as CT when their low percentile is this far below zero:
# MR magnitude and PET values are not negative, while air in HU is -1000 (and scanners pad with -1024 or less).
HU_AIR_BELOW = -500.0
UNSPECIFIC_MODALITIES = {"", "OT", "SC"}


def parse_window(value) -> str:
    """A window as --window or config.json gives it -> its canonical text ("auto", a preset, "LOW,HIGH").

    Also takes (low, high) numbers, and None, which means "percentile".
    Raises UserError with the accepted values.
    """
    if value is None:
        return "percentile"
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise UserError(f"a window is two numbers (low, high), not {value!r}")
        return _fixed(*value)
    text = str(value).strip().lower()
    if text in MODES or text in PRESETS:
        return text
    parts = text.split(",")
    if len(parts) == 2:
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            return _fixed(low, high)
    raise UserError(f"--window must be auto, percentile, {', '.join(PRESETS)} or LOW,HIGH (e.g. -1000,400), "
                    f"not {str(value)!r}")


def _fixed(low, high) -> str:
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UserError(f"--window LOW,HIGH needs finite numbers, not {low:g},{high:g}")
    if low >= high:
        raise UserError(f"--window LOW,HIGH needs LOW below HIGH, and {_number(low)} is not below {_number(high)}")
    return f"{_number(low)},{_number(high)}"


def _number(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def fixed_range(window: str) -> tuple[float, float] | None:
    """(low, high) of a preset or "LOW,HIGH" window; None for "auto" and "percentile"."""
    if window in PRESETS:
        return PRESETS[window]
    if window in MODES:
        return None
    low, high = window.split(",")
    return float(low), float(high)


def window_by_scan(window: str) -> dict[str, str]:
    """What a window setting does to each kind of scan, in words and numbers: the metadata of an exported model
    carries it, for a deployment that prepares inputs without perceiver-med."""
    low, high = PERCENTILES
    percentiles = (f"the {low:g}th..{high:g}th percentiles of the scan's own values (a volume's over up to "
                   f"{STATISTICS_SLICES} slices spread over it)")
    fixed = fixed_range(window)
    if fixed is not None:
        every = f"{_number(fixed[0])}..{_number(fixed[1])} in the scan's units (HU for CT)"
    elif window == "percentile":
        every = percentiles
    else:
        lung = "{0}..{1} HU (lung)".format(*map(_number, PRESETS["lung"]))
        return {"CT volume": lung,
                "volume without a modality": f"{lung} where its low percentile is at most {HU_AIR_BELOW:g}, "
                                             f"else {percentiles}",
                "other volume (MR, PT, NM...)": percentiles,
                "2D image": f"its DICOM VOI transform (VOI LUT, or window centre and width), else {percentiles}"}
    return {"every scan": every}


def statistics_slices(num_slices: int) -> list[int]:
    """The slices whose values give a volume's percentiles: up to STATISTICS_SLICES, evenly spread, ends included."""
    count = min(num_slices, STATISTICS_SLICES)
    return sorted({int(k) for k in np.round(np.linspace(0, num_slices - 1, count))})


def needs_statistics(window: str, modality: str) -> bool:
    """Whether a volume's window depends on its values (so its statistics slices must be read)."""
    return window == "percentile" or (window == "auto" and modality.strip().upper() != "CT")


def percentile_range(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, PERCENTILES)
    return float(low), float(high)


def volume_range(window: str, modality: str, statistics: np.ndarray | None) -> tuple[float, float]:
    """(low, high) for a volume: `statistics` holds its `statistics_slices` (None when not `needs_statistics`)."""
    fixed = fixed_range(window)
    if fixed is not None:
        return fixed
    if not needs_statistics(window, modality):
        return PRESETS["lung"]
    low, high = percentile_range(statistics)
    if window == "auto" and modality.strip().upper() in UNSPECIFIC_MODALITIES and low <= HU_AIR_BELOW:
        return PRESETS["lung"]
    return low, high


def to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and map linearly to [0, 1] (all zeros for an empty range: a constant image)."""
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return ((np.clip(values, low, high) - low) / (high - low)).astype(np.float32)


def image_to_unit(image: np.ndarray, window: str, voi=None, center_width: tuple[float, float] | None = None
                  ) -> np.ndarray:
    """A 2D image -> [0, 1]: a fixed window, its DICOM VOI (`voi`, a dicom.DicomVoi), a linear VOI window
    (`center_width`, from a reader that keeps no VOI attributes), or its own percentiles."""
    fixed = fixed_range(window)
    if window == "auto" and voi is not None and voi.has_transform:
        return apply_dicom_voi(image, voi)
    if fixed is not None and voi is not None and voi.inverted_about is not None:
        # MONOCHROME1: the window is in the file's modality values, which the reader inverted
        return 1.0 - to_unit(voi.inverted_about - image, *fixed)
    if fixed is None and window == "auto" and center_width is not None:
        fixed = voi_to_range(center_width)
    return to_unit(image, *(fixed if fixed is not None else percentile_range(image)))


def voi_to_range(window: tuple[float, float]) -> tuple[float, float]:
    """DICOM VOI (center, width) -> (low, high), the LINEAR function of PS3.3 C.11.2.1.2.1."""
    center, width = window
    return (center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)


def apply_dicom_voi(image: np.ndarray, voi) -> np.ndarray:
    """The VOI transform of the DICOM file `voi` came from, by pydicom's apply_voi_lut, scaled to [0, 1] by
    its output range, on the modality values (HU for CT) of `image` (dense-bright voxels from dicom.decode)."""
    from pydicom.pixels import apply_voi_lut

    values = image if voi.inverted_about is None else voi.inverted_about - image
    attributes = voi.attributes
    if attributes.get("VOILUTSequence"):
        entries, first, bits = (int(v) for v in attributes.VOILUTSequence[0].LUTDescriptor)
        entries = entries or 1 << 16  # PS3.3 C.11.2.1.1: 0 means 2^16 entries
        # the LUT is indexed by integer values; clipping to its input range first is the standard's rule
        # (below: the first entry, above: the last) and keeps pydicom's unsigned index from wrapping
        values = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
        top = (1 << bits) - 1  # the output range is 0 .. 2^bits - 1 (PS3.3 C.11.2.1.1)
    else:
        top = (1 << 16) - 1  # attributes carry BitsStored 16, unsigned, no rescale: outputs 0 .. 65535
    try:
        unit = np.asarray(apply_voi_lut(values, attributes), dtype=np.float64) / top
    except Exception as exc:  # pydicom raises several types for VOI data it cannot apply
        raise ScanError(f"its DICOM VOI LUT cannot be applied ({type(exc).__name__}: {exc}); "
                        "choose another --window") from None
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    # MONOCHROME1 shows the lowest VOI output white: dense-bright is its inverse (PS3.3 C.7.6.3.1.2)
    return 1.0 - unit if voi.inverted_about is not None else unit
