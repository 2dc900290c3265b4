"""The project's vocabularies, each written once: metric names, stem strategies, the stage `train:` grammar,
luminance weights and file suffixes. No heavy imports here: the config schema, the readers and the tools all
read these names.
"""

from __future__ import annotations

# metric names of the run-folder contract (summary.json, reports, TensorBoard), in report order
METRICS = ("auroc", "auprc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
           "brier", "ece")
# the metrics that are proportions of counted images (Wilson intervals); the others get a patient bootstrap
PROPORTION_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
# the short table printed at the end of a run
TABLE_METRICS = ("auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity", "brier")
# what validation logs per epoch (plus the loss)
EPOCH_METRICS = ("auroc", "auprc", "accuracy", "balanced_accuracy", "sensitivity", "specificity")
# what may choose the best epoch (train.monitor); 'loss' is minimised, the others maximised
MONITORS = ("auroc", "auprc", "loss", "balanced_accuracy")

# 1-channel stem conversions (pipeline.model.stems); `auto` picks one of them from the weights' statistics
STEM_STRATEGIES = ("sum", "fold", "repeat", "mean", "random")

# ITU-R BT.601 luma: colour ultrasound, colour DICOM, RGB rasters and the RGB-input export all use these
LUMA_REC601 = (0.299, 0.587, 0.114)

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ""})  # DICOM files often have no extension
# what a folder manifest or an archive index never tries to read as an image
TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt", ".md", ".json", ".yaml", ".yml", ".xml", ".html", ".htm",
                           ".log", ".py", ".sh", ".pdf", ".zip", ".tar", ".ini", ".cfg", ".rst", ".doc",
                           ".docx", ".xls", ".xlsx"})
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES | {".nii", ".gz"}


def parse_train_spec(train: str) -> int | None:
    """A stage's `train:` value -> None for 'all', 0 for 'head', N for 'last:N' (the last N block groups of
    timm's group_matcher, plus the head). ValueError names the grammar."""
    if train == "all":
        return None
    if train == "head":
        return 0
    if isinstance(train, str) and train.startswith("last:") and train[5:].isdigit() and int(train[5:]) > 0:
        return int(train[5:])
    raise ValueError(f"must be 'head', 'all' or 'last:N' with N > 0, got {train!r}")
