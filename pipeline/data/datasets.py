"""Decoding every sample once, and the per-fold MONAI datasets built on the decoded images.

MONAI's CacheDataset / PersistentDataset are not used for the decode step: they stop at the first unreadable
file, while `data.on_error: skip` must record the file in skipped.csv and go on, and CacheDataset would decode
every image again for each fold. Here each (file, frame) is decoded once, before the folds are drawn, so a
skipped file can never make fold membership depend on which fold happened to read it. `decode_samples` returns
what it kept (with an ImageStore of their pixels, see pipeline.data.cache) and what it skipped; the folds then index
the kept samples.

The first decode runs in a process pool (JPEG 2000 decoding is CPU-bound and threads share one interpreter);
workers write straight into the disk cache, or send the uint16 images back for the memory cache.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, MapTransform, SelectItemsd

from pipeline.data.cache import DiskCache, DiskStore, ImageStore, MemoryStore, write_atomic
from pipeline.data.checks import where
from pipeline.data.manifest import Sample, Skipped
from pipeline.data.privacy import shown_image
from pipeline.data.transforms import load_transforms
from pipeline.errors import DataError, error_reason
from pipeline.schema import Config, DataConfig
from pipeline.threads import resolved_threads

# cached images are stored as 16-bit fixed point: half of float32's memory, and a finer step (1.5e-5) than
# float16 has near 1.0 (4.9e-4), so training sees what inference on the file sees
_Q = 65535.0


def quantize(image: torch.Tensor) -> np.ndarray:
    return np.round(image.clamp(0, 1).numpy() * _Q).astype(np.uint16)


def dequantize(stored: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(stored.astype(np.float32) / _Q)


class FileStore:
    """`data.cache: none`: every get() reads and decodes the file again (memory stays one image)."""

    def __init__(self, cfg: Config, samples: Sequence[Sample]):
        self.keys = tuple(s.key for s in samples)
        self.chain = load_transforms(cfg.data)

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, i: int) -> np.ndarray:
        image, frame = self.keys[i]
        return quantize(self.chain({"image": image, "frame": frame})["image"])


@dataclass(frozen=True)
class Decoded:
    """The samples that decoded, in manifest order, and their 1xSxS uint16 images (`images.get(i)`; None:
    read the files again, as data.cache=none does)."""

    samples: tuple[Sample, ...]
    images: ImageStore | None
    skipped: tuple[Skipped, ...]
    from_cache: int | None = None  # samples the disk cache served (None: no disk cache); the rest were decoded

    @property
    def cache_note(self) -> str:
        if self.from_cache is None:
            return ""
        return f": {self.from_cache} from the disk cache, {len(self.samples) - self.from_cache} decoded"


# --- the decode workers: one chain per process, built once -------------------------------------------------
_CHAIN = None


def _init_worker(cfg: Config, pool: bool = True) -> None:
    global _CHAIN
    if pool:
        from monai.data.meta_obj import set_track_meta

        torch.set_num_threads(1)  # one process per core; more threads each would oversubscribe
        set_track_meta(False)
    _CHAIN = load_transforms(cfg.data)


def _decode_chunk(tasks: list, keep: bool) -> list:
    """[(i, image, frame, entry or None)] -> [(i, uint16 image or None, None or the reader's reason)]."""
    out = []
    for i, image, frame, entry in tasks:
        try:
            pixels = quantize(_CHAIN({"image": image, "frame": frame})["image"])
        except Exception as exc:  # any failure of one file (odd data in a transform too) names it, on one line
            out.append((i, None, error_reason(exc)))
            continue
        if entry is not None:
            write_atomic(Path(entry), pixels)
        out.append((i, pixels if keep else None, None))
    return out


def _pool_context():
    # fork starts workers in milliseconds, so small sets need no second path; it is what torch's DataLoader
    # workers use too, and safe here for the same reason (each worker sets one torch thread before any op).
    # Where fork is not the platform's way (macOS, Windows) or CUDA is already up, spawn.
    if sys.platform.startswith("linux") and not torch.cuda.is_initialized():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


# below this many images the pool's start (about 0.5 s on a busy 2-core machine) costs more than it saves;
# a thread pool was measured no faster than this one loop (the decoders hold the GIL), so there is no third path
_POOL_MIN = 64


def _run_tasks(cfg: Config, tasks: list, keep: bool, workers: int, progress: bool):
    """Decode `tasks`, yielding each chunk's results as they finish (in no particular order)."""
    bar = None
    if progress and tasks:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="decode", unit="img", leave=False)  # shows img/s and the ETA
    try:
        if workers <= 1 or len(tasks) < _POOL_MIN:
            _init_worker(cfg, pool=False)
            step = 64
            for start in range(0, len(tasks), step):
                chunk = _decode_chunk(tasks[start:start + step], keep)
                if bar is not None:
                    bar.update(len(chunk))
                yield chunk
            return
        # chunks: few enough to keep the inter-process traffic small, many enough for an even load and a live
        # bar, and short (16 images at most), so a run stopped by an unreadable file does not wait long
        size = max(1, min(16, math.ceil(len(tasks) / (workers * 8))))
        with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker,
                                 initargs=(cfg,)) as pool:
            pending = {pool.submit(_decode_chunk, tasks[s:s + size], keep) for s in range(0, len(tasks), size)}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        chunk = fut.result()
                        if bar is not None:
                            bar.update(len(chunk))
                        yield chunk
            finally:  # an error that stops the run: no more chunks
                for fut in pending:
                    fut.cancel()
    finally:
        if bar is not None:
            bar.close()


def decode_samples(cfg: Config, samples: Sequence[Sample], progress: bool = False,
                   workers: int | None = None) -> Decoded:
    """Decode every sample with the training reader settings (`workers` processes, default train.threads).
    Unreadable ones stop the run, or with on_error=skip are returned as skipped. data.cache: memory keeps the
    images, disk serves them from / writes them to the disk cache, none keeps nothing."""
    mode = cfg.data.cache
    cache = DiskCache.for_config(cfg.data) if mode == "disk" else None
    entries: list[Path | None] = [None] * len(samples)
    tasks = []
    for i, s in enumerate(samples):
        if cache is not None:
            try:
                entries[i] = cache.entry(s.image, s.frame)
            except OSError:
                pass  # a missing or unreadable file: the decode below says why, with the reader's words
            if entries[i] is not None and cache.hit(entries[i]):
                continue
        tasks.append((i, s.image, s.frame, None if entries[i] is None else str(entries[i])))
    hits = len(samples) - len(tasks)

    keep = mode == "memory"
    pixels: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    with closing(_run_tasks(cfg, tasks, keep, workers or resolved_threads(cfg), progress)) as chunks:
        for chunk in chunks:
            for i, image, reason in chunk:
                if reason is not None:
                    if cfg.data.on_error != "skip":
                        raise DataError(f"{where(cfg, samples[i].row, samples[i].image)}: {reason}")
                    errors[i] = reason
                elif keep:
                    pixels[i] = image

    kept = [i for i in range(len(samples)) if i not in errors]
    skipped = tuple(Skipped(shown_image(cfg, samples[i]), samples[i].row, errors[i]) for i in sorted(errors))
    kept_samples = tuple(samples[i] for i in kept)
    if mode == "memory":
        store: ImageStore = MemoryStore([pixels[i] for i in kept])
    elif mode == "disk":
        store = DiskStore([entries[i] for i in kept])
    else:
        store = FileStore(cfg, kept_samples)
    return Decoded(kept_samples, store, skipped, from_cache=hits if cache is not None else None)


def image_reader(data: DataConfig):
    """(path, frame) -> 1xSxS float tensor in [0, 1] with the run's reader settings, for scoring new files; with
    data.cache=disk through the same cache as training (read if there, else decoded and stored). predict,
    evaluate and Grad-CAM all read through it, so they see the pixels the run scored."""
    chain = load_transforms(data)

    def decode(path: str, frame: int | None) -> torch.Tensor:
        return chain({"image": path, "frame": frame})["image"]

    if data.cache == "memory":
        # the run saw its images as 16-bit fixed point: the same rounding makes scores reproduce the run's own
        # test predictions (it moves probabilities by ~1e-5)
        return lambda path, frame: dequantize(quantize(decode(path, frame)))
    if data.cache != "disk":
        return decode
    cache = DiskCache.for_config(data)

    def read(path: str, frame: int | None) -> torch.Tensor:
        try:
            entry = cache.entry(path, frame)
        except OSError:
            return decode(path, frame)  # the reader names what is wrong with the file
        if cache.hit(entry):
            return dequantize(np.load(entry))
        pixels = quantize(decode(path, frame))
        write_atomic(entry, pixels)
        return dequantize(pixels)

    return read


class FromStore(MapTransform):
    """{'image': sample index} -> {'image': 1xSxS float in [0, 1]} from an ImageStore."""

    def __init__(self, store: ImageStore, keys="image"):
        super().__init__(keys)
        self.store = store

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = dequantize(self.store.get(d[key]))
        return d


def _store(cfg: Config, decoded: Decoded) -> ImageStore:
    return decoded.images if decoded.images is not None else FileStore(cfg, decoded.samples)


def decoded_pixels(cfg: Config, decoded: Decoded, index: int) -> np.ndarray:
    """(S, S) [0, 1] pixels of one decoded sample, exactly as training and scoring saw them."""
    return np.asarray(dequantize(_store(cfg, decoded).get(index)))[0]


def sample_dataset(cfg: Config, decoded: Decoded, indices: Sequence[int], transform: Compose) -> Dataset:
    """A MONAI Dataset of the samples `indices`: {'image': CxSxS float, 'target': float tensor, 'index': int}.

    Each item's image comes from the decoded store when the loader asks for it (memory, a disk-cache read, or
    the file decoded again); `transform` (augmentation + normalisation) runs per sample.
    """
    store = _store(cfg, decoded)
    data = [{"image": i, "target": torch.as_tensor(decoded.samples[i].target, dtype=torch.float32), "index": i}
            for i in indices]
    return Dataset(data, Compose([FromStore(store), transform, SelectItemsd(("image", "target", "index"))]))
