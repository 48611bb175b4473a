"""OpenVINO int8 models of the backbones: NNCF post-training quantization of the ONNX export,
made once per cache and calibrated on posters that ship with the package (``paths.SAMPLE_DIR``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from posterlens.errors import EngineError
from posterlens.features.backbones import Backbone
from posterlens.features.export import EXPORT_VERSION, onnx_file
from posterlens.paths import SAMPLE_DIR

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CALIBRATION_DIR", "CALIBRATION_POSTERS", "CALIBRATION_BATCH", "RECIPE", "int8_dir", "calibration_pixels", "quantize_int8",
           "make_int8_models", "int8_file"]

log = logging.getLogger(__name__)

INT8 = "openvino-int8"
CALIBRATION_DIR = SAMPLE_DIR / "images"  # NNCF calibrates the int8 models on these posters' activations
CALIBRATION_POSTERS = 64  # the first ones by name: as faithful as all 240 here, 2x faster to quantize
# NNCF's statistics taken CALIBRATION_BATCH posters at a time, without bias correction: lite0 + lite2 quantized
# in 6.5 s instead of 15.5 s here; least cosine to f32 over 256 development posters 0.957 / 0.985 (0.958 /
# 0.991 with it), median 0.9975 / 0.9984 (0.9976 / 0.9989)
CALIBRATION_BATCH = 8
RECIPE = f"int8-{CALIBRATION_POSTERS}b{CALIBRATION_BATCH}"  # names the models and their features in the cache


def int8_dir(backbone: Backbone, cache_dir: Path) -> Path:
    """Where the backbone's int8 model lives in the cache (``model.xml`` + ``model.bin``)."""
    return Path(cache_dir) / "openvino" / f"{backbone.key}.{EXPORT_VERSION}.{RECIPE}"


def _import_nncf():
    """nncf, with its usage telemetry off and its log and progress bars at warnings only.

    Left alone, importing nncf writes a client id under ``~/intel`` and its calls report to Google
    Analytics. While it is imported, ``openvino_telemetry`` is made unimportable (nncf then falls
    back to its stub) and ``NNCF_CI`` is set (its own switch, for a host that imported the
    telemetry package already); both are put back afterwards.
    """
    import sys

    saved_env, saved_module = os.environ.get("NNCF_CI"), sys.modules.get("openvino_telemetry", ...)
    os.environ["NNCF_CI"] = "1"
    if saved_module is ...:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import fails: nncf uses its stub
    try:
        import nncf
    except ImportError as err:
        raise EngineError(f"engine {INT8!r} quantizes with nncf, which is not installed: run `make setup`, "
                          "or use --engine openvino") from err
    finally:
        if saved_env is None:
            os.environ.pop("NNCF_CI", None)
        else:
            os.environ["NNCF_CI"] = saved_env
        if saved_module is ...:
            sys.modules.pop("openvino_telemetry", None)
    nncf.set_log_level(logging.WARNING)
    return nncf


def calibration_pixels(backbone: Backbone) -> np.ndarray:
    """The first ``CALIBRATION_POSTERS`` of ``CALIBRATION_DIR`` by name, uint8 at the backbone's input size."""
    import numpy as np

    from posterlens.data.images import decode, read_poster_bytes

    files = sorted(p for p in CALIBRATION_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < CALIBRATION_POSTERS:
        raise EngineError(f"engine {INT8!r} calibrates on the bundled sample posters, not found in "
                          f"{CALIBRATION_DIR} (reinstall posterlens, or use --engine openvino)")
    size = (backbone.width, backbone.height)
    return np.stack([np.asarray(decode(p, read_poster_bytes(p), size), dtype=np.uint8)
                     for p in files[:CALIBRATION_POSTERS]])


def quantize_int8(backbone: Backbone, cache_dir: Path) -> Path:
    """Make the backbone's int8 model: NNCF post-training quantization (preset PERFORMANCE, statistics
    ``CALIBRATION_BATCH`` posters at a time, no bias correction) of the ONNX export, calibrated on
    ``calibration_pixels``; saved to
    ``int8_dir`` as a whole (a folder renamed into place, so a half-written model never loads)."""
    _import_nncf()
    with contextlib.redirect_stdout(io.StringIO()):  # nncf's progress bars, whatever its log level
        return _quantize(backbone, cache_dir)


def make_int8_models(backbones: Sequence[Backbone], cache_dir: Path) -> None:
    """Make the int8 models of ``backbones`` that the cache lacks (``quantize_int8``), all at once, a
    thread each: NNCF spends much of its time in OpenVINO, which releases the GIL (lite0 + lite2:
    10.7 s instead of 13.3 s here, the same models byte for byte). Their ONNX exports are made
    first, one at a time (torch's exporter keeps global state)."""
    missing = [b for b in dict.fromkeys(backbones) if not (int8_dir(b, cache_dir) / "model.xml").exists()]
    for backbone in missing:
        onnx_file(backbone, cache_dir)
    if len(missing) < 2:
        for backbone in missing:
            quantize_int8(backbone, cache_dir)
        return
    _import_nncf()
    with contextlib.redirect_stdout(io.StringIO()), ThreadPoolExecutor(len(missing), "quantize") as pool:
        for made in [pool.submit(_quantize, backbone, cache_dir) for backbone in missing]:
            made.result()


def _quantize(backbone: Backbone, cache_dir: Path) -> Path:
    """``quantize_int8``, its caller having imported nncf (``_import_nncf``) and hidden its progress bars."""
    import shutil

    import nncf
    import openvino as ov
    from openvino.passes import ConstantFolding, Manager

    log.info("making the int8 model of %s (once per cache)", backbone.name)
    model = ov.Core().read_model(str(onnx_file(backbone, cache_dir)))
    # fold the Reshape in front of each depthwise weight, so that its quantizer sits on a constant
    # and the CPU runs those convolutions in int8 (1.4x -> 2.2x over f32 for lite0 here)
    passes = Manager()
    passes.register_pass(ConstantFolding())
    passes.run_passes(model)
    pixels = calibration_pixels(backbone)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    starts = range(0, len(pixels), CALIBRATION_BATCH)
    batches = nncf.Dataset(starts, lambda i: pixels[i:i + CALIBRATION_BATCH])
    quantized = nncf.quantize(model, batches, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(starts),
                              advanced_parameters=AdvancedQuantizationParameters(batchwise_statistics=True,
                                                                                 disable_bias_correction=True))
    folder = int8_dir(backbone, cache_dir)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        ov.save_model(quantized, str(tmp / "model.xml"))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it meanwhile: theirs is the same model
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "model.xml"


def int8_file(backbone: Backbone, cache_dir: Path) -> Path:
    """The backbone's int8 model in the cache, made on first use."""
    path = int8_dir(backbone, cache_dir) / "model.xml"
    return path if path.exists() else quantize_int8(backbone, cache_dir)
