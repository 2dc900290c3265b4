"""The deployment record (RUN/deployment.json): everything that turns a file into the run's probabilities.

Written once, at the end of training, from what the run actually used: the resolved stem and model config,
the input normalisation, the data settings that shape and read the pixels (reader options and frame policy
follow from them by one rule, `DataConfig.reader_options`), the precision the run chose, the operating
threshold and the calibration temperature. predict, evaluate, every export, the MONAI bundle, the model card
and Grad-CAM all read this one record, so they agree with the run's own test predictions by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pipeline.model.stems import Normalization
from pipeline.schema import DataConfig, ModelConfig, TaskConfig

# the DataConfig fields that decide how a file becomes the network's input (and where its decoded copy lives)
DEPLOYED_DATA = ("manifest", *DataConfig.PIXEL_SETTINGS, "min_size", "cache", "cache_dir", "cache_key")


@dataclass(frozen=True)
class Deployment:
    task: TaskConfig
    model: ModelConfig  # `stem` resolved (never `auto`)
    normalization: Normalization
    data: DataConfig  # only DEPLOYED_DATA are meaningful; the rest are defaults
    precision: str = "fp32"
    channels_last: bool = False
    threshold: float = 0.5  # the operating point chosen on the out-of-fold predictions
    temperature: float | list[float] | None = None  # calibration; None: probabilities as the models give them
    folds: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()
    hide_file_names: bool = False
    extra: dict = field(default_factory=dict)  # test-time augmentation and later inference settings

    @property
    def image_size(self) -> int:
        return self.data.image_size

    @property
    def frames(self):
        return self.data.frames

    def reader_options(self):
        return self.data.reader_options()

    def to_json(self) -> dict:
        return {"task": self.task.model_dump(mode="json"), "model": self.model.model_dump(mode="json"),
                "normalization": self.normalization.to_dict(),
                "data": self.data.model_dump(mode="json", include=set(DEPLOYED_DATA)),
                "reader": asdict(self.reader_options()),  # for a reader outside Python; derived, never read back
                "precision": self.precision, "channels_last": self.channels_last, "threshold": self.threshold,
                "temperature": self.temperature, "folds": list(self.folds), "seeds": list(self.seeds),
                "hide_file_names": self.hide_file_names, "extra": self.extra}

    @classmethod
    def from_json(cls, d: dict) -> Deployment:
        norm = d["normalization"]
        return cls(task=TaskConfig(**d["task"]), model=ModelConfig(**d["model"]),
                   normalization=Normalization(tuple(norm["mean"]), tuple(norm["std"])),
                   data=DataConfig(**d["data"]), precision=d.get("precision", "fp32"),
                   channels_last=bool(d.get("channels_last", False)), threshold=float(d.get("threshold", 0.5)),
                   temperature=d.get("temperature"), folds=tuple(d.get("folds", ())),
                   seeds=tuple(d.get("seeds", ())), hide_file_names=bool(d.get("hide_file_names", False)),
                   extra=dict(d.get("extra", {})))
