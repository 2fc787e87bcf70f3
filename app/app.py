"""TAGS tumor segmentation: CT DICOM study in, DICOM SEG out (MONAI Deploy App SDK 4.0).

Run::

    python app -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL_FOLDER [--device cpu|cuda] [--organ-segments]

or with HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH / HOLOSCAN_MODEL_PATH set (the MAP).
The SDK's own options pass through: -l / --log-level (DEBUG, INFO, WARN, ERROR, CRITICAL),
-w / --workdir, -t / --triton-server-netloc; any other argument is refused with its name.
Results are written to a staging folder and moved into the output folder only when the whole
run succeeded: a failed run leaves the output folder as it was (or absent, when the run would have
made it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from tags.model_folder import ModelFolderError
from tags.preprocessing import CTInputError

from operators import (
    CTPreprocessOperator, CTSeriesSelectorOperator, InferenceSettings, LesionReportOperator, OrganPromptOperator,
    SegWriterOperator, StudyLoaderOperator, TagsInferenceOperator,
)
from operators.ct_series_selector import MAX_VOXELS
from operators.ct_volume_operator import CTVolumeOperator

CT_SELECTION_RULES = json.dumps(
    {
        "selections": [
            {
                "name": "Axial CT, original/primary",
                "conditions": {
                    "Modality": "(?i)^CT$",
                    "ImageType": ["ORIGINAL", "PRIMARY", "!LOCALIZER"],
                    "ImageOrientationPatient": "Axial",
                },
            }
        ]
    }
)
"""SDK selection rules: an axial ORIGINAL/PRIMARY CT series that is not a localizer. Among
several matches :class:`~operators.ct_series_selector.CTSeriesSelectorOperator` takes the one
with the most instances, then the lowest series number, so the choice is deterministic."""

log = logging.getLogger("tags.app")


@dataclass
class AppOptions:
    """Options beyond the SDK's -i/-o/-m (command line or environment)."""

    inference: InferenceSettings = InferenceSettings()
    organ_segments: bool = False
    use_study_seg: bool = True
    min_lesion_ml: float = 0.1
    max_voxels: int = MAX_VOXELS
    started: Optional[float] = None
    """When the run started (seconds since the epoch): the process start for ``python app``."""


class TagsSegApp(Application):
    """CT study -> axial CT series -> organ prompts -> TAGS tumors -> DICOM SEG -> lesion SR."""

    def __init__(self, *args, options: Optional[AppOptions] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tags_options = options or AppOptions()

    def compose(self) -> None:
        ctx: AppContext = Application.init_app_context(self.argv)
        opts = self.tags_options
        loader = StudyLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(ctx.input_path), must_load=False, name="loader"
        )
        selector = CTSeriesSelectorOperator(
            self, rules=CT_SELECTION_RULES, all_matched=True, max_voxels=opts.max_voxels, name="selector"
        )
        to_volume = CTVolumeOperator(self, name="to_volume")
        preprocess = CTPreprocessOperator(self, started=opts.started, name="preprocess")
        organs = OrganPromptOperator(
            self, model_path=ctx.model_path, settings=opts.inference, use_study_seg=opts.use_study_seg, name="organs",
        )
        tumors = TagsInferenceOperator(
            self, model_path=ctx.model_path, settings=opts.inference, name="tumors"
        )
        writer = SegWriterOperator(self, output_folder=ctx.output_path, include_organs=opts.organ_segments, name="seg_writer")
        report = LesionReportOperator(self, output_folder=ctx.output_path, min_lesion_ml=opts.min_lesion_ml, name="report")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, preprocess, {("image", "image")})
        self.add_flow(selector, preprocess, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(preprocess, organs, {("ct", "ct")})
        self.add_flow(loader, organs, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(preprocess, tumors, {("ct", "ct")})
        self.add_flow(organs, tumors, {("organs", "organs")})
        self.add_flow(tumors, writer, {("segmentation", "segmentation")})
        self.add_flow(writer, report, {("segmentation", "segmentation"), ("seg", "seg")})


# -- running it -------------------------------------------------------------------------------


def _option_parser() -> argparse.ArgumentParser:
    """The application's own options. Values are checked by :func:`_checked_options` (command line
    and environment alike), so no option has a ``type`` or ``choices`` here."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    p.add_argument("--device", default=os.environ.get("TAGS_DEVICE"), help="cpu, cuda, cuda:1 (default: $TAGS_DEVICE, else CUDA when available)")
    p.add_argument("--precision", default=os.environ.get("TAGS_PRECISION"),
                   help="fp32, bf16 or fp16; default: bf16 where the GPU or CPU has it natively, fp16 on older GPUs, else fp32 "
                        "($TAGS_PRECISION)")
    p.add_argument("--compile", action="store_true", default=os.environ.get("TAGS_COMPILE", "") == "1",
                   help="compile the image encoder with torch.compile ($TAGS_COMPILE=1; CPU needs a C++ compiler; "
                        "see docs/performance.md)")
    p.add_argument("--backbone-checkpoint", default=os.environ.get("TAGS_SAM_VIT_B_CHECKPOINT"),
                   help="base checkpoint file of a sam_vit_b model (sam_vit_b_01ec64.pth; "
                        "$TAGS_SAM_VIT_B_CHECKPOINT); litemedsam models use the installed package's file")
    p.add_argument("--organ-segments", action="store_true", default=os.environ.get("TAGS_ORGAN_SEGMENTS", "") == "1",
                   help="also write the organ masks as segments ($TAGS_ORGAN_SEGMENTS=1)")
    p.add_argument("--ignore-study-seg", action="store_true", help="always use the model's organ pass")
    p.add_argument("--min-lesion-ml", default=os.environ.get("TAGS_MIN_LESION_ML", "0.1"),
                   help="smallest lesion reported in the SR, ml (default 0.1; $TAGS_MIN_LESION_ML)")
    p.add_argument("--max-voxels", default=os.environ.get("TAGS_MAX_VOXELS", str(MAX_VOXELS)),
                   help=f"largest CT accepted, voxels (default {MAX_VOXELS} = 512 x 512 x 1000; $TAGS_MAX_VOXELS)")
    return p


class AppOptionError(ValueError):
    """An option or environment variable the application cannot use; the message names it."""


def _checked_options(ns: argparse.Namespace) -> argparse.Namespace:
    """The option values, from the command line or the environment, checked and converted."""
    if ns.precision not in (None, "fp32", "bf16", "fp16"):
        raise AppOptionError(f"precision {ns.precision!r} (--precision / $TAGS_PRECISION) is not fp32, bf16 or fp16")
    try:
        ns.min_lesion_ml = float(ns.min_lesion_ml)
    except ValueError:
        raise AppOptionError(f"--min-lesion-ml / $TAGS_MIN_LESION_ML {ns.min_lesion_ml!r} is not a number") from None
    if not ns.min_lesion_ml >= 0:
        raise AppOptionError(f"--min-lesion-ml must be 0 or more, not {ns.min_lesion_ml}")
    ns.max_voxels = _voxel_limit(ns.max_voxels)
    if ns.device is not None:
        import torch

        try:
            dev = torch.device(ns.device)
        except RuntimeError:
            raise AppOptionError(f"device {ns.device!r} (--device / $TAGS_DEVICE) is not a torch device (cpu, cuda, cuda:1)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise AppOptionError(f"device {ns.device!r} was asked for, but no CUDA device is available")
    return ns


def _voxel_limit(value) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise AppOptionError(f"--max-voxels / $TAGS_MAX_VOXELS {value!r} is not a whole number") from None
    if limit <= 0:
        raise AppOptionError(f"--max-voxels must be more than 0, not {limit}")
    return limit


def max_voxels(argv: Sequence[str] = ()) -> int:
    """The CT voxel limit of a run with these arguments: --max-voxels, else $TAGS_MAX_VOXELS,
    else :data:`~operators.ct_series_selector.MAX_VOXELS`."""
    ns, _ = _option_parser().parse_known_args(list(argv))
    return _voxel_limit(ns.max_voxels)


SDK_OPTIONS = (("-i", "--input"), ("-o", "--output"), ("-m", "--model"), ("-l", "--log-level"),
               ("-w", "--workdir"), ("-t", "--triton-server-netloc"))
"""The options the MONAI Deploy SDK's own parser takes (``monai.deploy.core.arg_parser``), each
with a value; the application passes them on."""
SDK_LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")
"""The SDK's ``--log-level`` choices (upper-cased, as it does)."""


def _paths(sdk_args: List[str]) -> tuple:
    """Input, output and model paths as the SDK resolves them (arguments over environment).
    Raises AppOptionError naming any argument that neither the application nor the SDK takes
    (the SDK's parser would otherwise report a missing default input folder instead)."""
    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for short, long in SDK_OPTIONS:
        p.add_argument(short, long)
    try:
        a, unknown = p.parse_known_args(sdk_args)
    except argparse.ArgumentError as e:
        raise AppOptionError(str(e)) from None
    if unknown:
        raise AppOptionError(f"unknown argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)} "
                             "(python app --help lists the options)")
    if a.log_level is not None and a.log_level.upper() not in SDK_LOG_LEVELS:
        raise AppOptionError(f"log level {a.log_level!r} (-l / --log-level) is not {', '.join(SDK_LOG_LEVELS[:-1])} "
                             f"or {SDK_LOG_LEVELS[-1]}")
    env = os.environ
    return (a.input or env.get("HOLOSCAN_INPUT_PATH", "input"), a.output or env.get("HOLOSCAN_OUTPUT_PATH", "output"),
            a.model or env.get("HOLOSCAN_MODEL_PATH", "models"))


def run(argv: List[str], *, started: Optional[float] = None) -> Path:
    """Run the application; ``argv`` as on the command line (without the program name).

    ``started``: when the run started, seconds since the epoch (default: now); the start-up
    time in tags_results.json counts from it.

    Returns the output folder. Raises on any failure, after removing the staging folder.
    """
    try:
        opts_ns, sdk_args = _option_parser().parse_known_args(argv)
    except argparse.ArgumentError as e:  # e.g. an option without its value
        raise AppOptionError(str(e)) from None
    opts_ns = _checked_options(opts_ns)
    options = AppOptions(InferenceSettings(opts_ns.device, opts_ns.precision, opts_ns.compile,
                                           opts_ns.backbone_checkpoint), opts_ns.organ_segments,
                         not opts_ns.ignore_study_seg, opts_ns.min_lesion_ml, opts_ns.max_voxels,
                         time.time() if started is None else started)
    input_path, output_path, model_path = _paths(sdk_args)
    if not Path(input_path).is_dir():
        raise CTInputError(f"input folder not found: {input_path}")
    if not Path(model_path).exists():
        raise ModelFolderError(f"model folder not found: {model_path}")
    output = Path(output_path)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tags-partial-", dir=output))
    args = [a for a in sdk_args]
    rest = _strip_paths(args)
    full = [sys.executable, "app", "-i", str(input_path), "-o", str(staging), "-m", str(model_path), *rest]
    done = False
    try:
        TagsSegApp(full, options=options).run()
        written = sorted(staging.iterdir())
        if not written:
            raise RuntimeError("the application finished without writing a result")
        for f in written:
            f.replace(output / f.name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done and created:  # the folder this run made is not left behind empty
            try:
                output.rmdir()
            except OSError:  # something else was written into it meanwhile: kept
                pass
    return output


def _strip_paths(args: List[str]) -> List[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-i", "--input", "-o", "--output", "-m", "--model"):
            skip = True
            continue
        if any(a.startswith(f"{k}=") for k in ("--input", "--output", "--model")):
            continue
        out.append(a)
    return out


def main(argv: Optional[List[str]] = None, *, started: Optional[float] = None) -> int:
    """The command line: ``argv`` (default sys.argv[1:]); ``started`` as for :func:`run`."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        _option_parser().print_help()
        return 0
    try:
        out = run(argv, started=started)
    except (CTInputError, ModelFolderError, AppOptionError) as e:  # one clear line naming the problem
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - not a library message for the user: the traceback goes to the log
        logging.getLogger("app").error("unexpected failure", exc_info=True)
        print(f"error: the study could not be processed: an internal {type(e).__name__} that no input check "
              "caught; the traceback is in the log above", file=sys.stderr)
        return 1
    print(f"results in {out}")
    return 0
