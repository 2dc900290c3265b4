"""The persistent decode cache (data.cache: disk): what misses it, that it serves exactly the memory cache's
pixels, that concurrent writers leave it valid, and a 4,000-image dry run in bounded memory (the 20,000-image
figure is `graystem benchmark --suite scale`'s)."""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from pipeline.config import load_config
from pipeline.data.cache import READER_VERSION, DiskStore, MemoryStore
from pipeline.data.datasets import decode_samples, dequantize, image_reader, sample_dataset
from pipeline.data.manifest import load_manifest
from pipeline.data.transforms import sample_transforms
from pipeline.errors import DataError
from pipeline.threads import available_cores, loader_workers

ROOT = Path(__file__).resolve().parents[1]
N_PNG = 70  # above the process pool's threshold, so the pool writes the entries


def _write_manifest(folder: Path, images: list[str]) -> Path:
    rows = ["image,label,patient_id"] + [f"{name},{('normal', 'pneumonia')[i % 2]},P{i // 2}"
                                         for i, name in enumerate(images)]
    path = folder / "labels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def small_set(tmp_path) -> Path:
    """70 random PNGs of different shapes and one windowed CT DICOM (where data.voi matters)."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(N_PNG):
        shape = (20 + i % 7, 24 + i % 5)
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(tmp_path / f"img{i:03d}.png")
        names.append(f"img{i:03d}.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    names.append("ct.dcm")
    return _write_manifest(tmp_path, names)


def _cfg(manifest: Path, cache_dir: Path, *more: str):
    return load_config("smoke", [f"data.manifest={manifest}", "data.demo=null", "data.cache=disk",
                                 f"data.cache_dir={cache_dir}", "data.image_size=32", "data.min_size=8", *more])


def _decode(cfg, workers=2):
    return decode_samples(cfg, load_manifest(cfg).samples, workers=workers)


def _pixels(decoded) -> list[np.ndarray]:
    return [np.asarray(decoded.images.get(i)) for i in range(len(decoded.samples))]


def test_changed_settings_or_file_miss_the_cache_and_an_unchanged_run_hits_every_image(small_set, tmp_path):
    cache = tmp_path / "cache"
    n = N_PNG + 1
    first = _decode(_cfg(small_set, cache))
    assert (first.from_cache, len(first.samples)) == (0, n)
    assert first.cache_note == f": 0 from the disk cache, {n} decoded"
    entries = list((cache / f"v{READER_VERSION}").glob("*/*.npy"))
    assert len(entries) == n and not list(cache.rglob(".tmp-*"))
    for e in entries:  # as if decoded 40 days ago: a hit sets the mtime, the last use that pruning goes by
        os.utime(e, (time.time() - 40 * 86400,) * 2)
    again = _decode(_cfg(small_set, cache))
    assert again.from_cache == n and again.cache_note == f": {n} from the disk cache, 0 decoded"
    assert min(e.stat().st_mtime for e in entries) > time.time() - 60

    # every pixel setting is in the key: another VOI policy or image size decodes again
    assert _decode(_cfg(small_set, cache, "data.voi=none")).from_cache == 0
    assert _decode(_cfg(small_set, cache, "data.image_size=48")).from_cache == 0
    assert _decode(_cfg(small_set, cache)).from_cache == n  # and the first settings' entries are still there

    # a rewritten file (other pixels, a later mtime) is decoded again; the others still hit
    changed = small_set.parent / "img005.png"
    old = np.asarray(Image.open(changed))
    Image.fromarray(255 - old).save(changed)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    after = _decode(_cfg(small_set, cache))
    assert after.from_cache == n - 1
    fresh = _decode(_cfg(small_set, cache, "data.cache=memory"))
    k = [s.image for s in after.samples].index(str(changed))
    assert np.array_equal(after.images.get(k), fresh.images.get(k))
    assert not np.array_equal(after.images.get(k), first.images.get(k))  # the stale entry is not served


def test_content_key_follows_the_bytes_not_the_path(small_set, tmp_path):
    cache = tmp_path / "cache"
    n = N_PNG + 1
    assert _decode(_cfg(small_set, cache, "data.cache_key=content")).from_cache == 0
    copy = tmp_path / "copy"
    shutil.copytree(small_set.parent, copy)
    for f in copy.iterdir():  # a copy with new times: the stat key misses, the content key hits
        os.utime(f, ns=(0, 10**18))
    assert _decode(_cfg(copy / "labels.csv", cache, "data.cache_key=content")).from_cache == n
    assert _decode(_cfg(copy / "labels.csv", cache)).from_cache == 0


def test_disk_cache_pixels_equal_the_memory_cache_exactly(small_set, tmp_path):
    cache = tmp_path / "cache"
    memory = _decode(_cfg(small_set, cache, "data.cache=memory"), workers=1)
    assert memory.from_cache is None and memory.cache_note == ""
    written = _decode(_cfg(small_set, cache), workers=2)  # the pool's workers write the entries
    read = _decode(_cfg(small_set, cache), workers=2)  # every image from the cache
    assert read.from_cache == len(read.samples)
    assert isinstance(read.images, DiskStore) and isinstance(memory.images, MemoryStore)  # paths, not pixels
    for a, b, c in zip(_pixels(memory), _pixels(written), _pixels(read), strict=True):
        assert a.dtype == np.uint16 and a.shape == (1, 32, 32)
        assert np.array_equal(a, b) and np.array_equal(a, c)
    # and the datasets the folds train on see the same tensors from either store
    cfg = _cfg(small_set, cache)
    tf = sample_transforms(cfg, (0.5,), (0.25,), train=False)
    for x, y in zip(sample_dataset(cfg, memory, range(5), tf), sample_dataset(cfg, read, range(5), tf), strict=True):
        assert torch.equal(x["image"], y["image"]) and x["index"] == y["index"]


def test_none_cache_reads_the_same_pixels_from_the_files(small_set, tmp_path):
    memory = _decode(_cfg(small_set, tmp_path, "data.cache=memory"), workers=1)
    none = _decode(_cfg(small_set, tmp_path, "data.cache=none"), workers=1)
    assert none.from_cache is None and not (tmp_path / f"v{READER_VERSION}").exists()
    for i in (0, 7, N_PNG):
        assert np.array_equal(none.images.get(i), memory.images.get(i))


def test_a_skipped_file_keeps_the_reader_reason_and_its_row(small_set, tmp_path):
    (small_set.parent / "img003.png").write_bytes(b"not an image at all")
    decoded = _decode(_cfg(small_set, tmp_path / "cache", "data.on_error=skip"))
    assert len(decoded.samples) == N_PNG and decoded.from_cache == 0
    (skip,) = decoded.skipped
    assert skip.image.endswith("img003.png") and skip.row == 5
    assert "RuntimeError: applying transform" not in skip.reason and skip.reason
    again = _decode(_cfg(small_set, tmp_path / "cache", "data.on_error=skip"))
    assert again.from_cache == N_PNG and len(again.skipped) == 1  # a bad file is tried (and skipped) again
    with pytest.raises(DataError, match=re.escape(skip.reason)) as info:  # on_error=raise: the same words
        _decode(_cfg(small_set, tmp_path / "cache2"))
    assert str(info.value).startswith(f"labels.csv row 5: {skip.image}: ")


def test_predict_reads_through_the_runs_disk_cache(small_set, tmp_path):
    cfg = _cfg(small_set, tmp_path / "cache")
    read = image_reader(cfg.data)  # what predict uses to read new files with a run's settings
    s = load_manifest(cfg).samples[0]
    x = read(s.image, s.frame)  # decoded, then stored
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    decoded = _decode(cfg, workers=1)
    assert decoded.from_cache == 1  # training finds what predict stored, and the other way round
    assert torch.equal(x, dequantize(decoded.images.get(0))) and torch.equal(read(s.image, s.frame), x)


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.config import load_config
    from pipeline.data.datasets import decode_samples
    from pipeline.data.manifest import load_manifest
    manifest, cache, flag = sys.argv[1:4]
    cfg = load_config("smoke", [f"data.manifest={manifest}", "data.demo=null", "data.cache=disk",
                                f"data.cache_dir={cache}", "data.image_size=32", "data.min_size=8"])
    samples = load_manifest(cfg).samples
    Path(flag + ".ready").touch()
    while not Path(flag).exists():
        time.sleep(0.01)
    print(decode_samples(cfg, samples, workers=1).from_cache)
""")


def test_two_processes_writing_one_cache_at_once_leave_it_valid(small_set, tmp_path):
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(small_set), str(cache), f"{go}{k}"], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    deadline = time.time() + 300
    while not all(Path(f"{go}{k}.ready").exists() for k in (0, 1)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    for k in (0, 1):  # both start decoding the same files into the same folder together
        Path(f"{go}{k}").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not list(cache.rglob(".tmp-*"))  # no temporary file left behind
    entries = list(cache.rglob("*.npy"))
    assert len(entries) == N_PNG + 1
    for e in entries:
        assert np.load(e).shape == (1, 32, 32)
    read = _decode(_cfg(small_set, cache))
    memory = _decode(_cfg(small_set, cache, "data.cache=memory"), workers=1)
    assert read.from_cache == N_PNG + 1
    for a, b in zip(_pixels(read), _pixels(memory), strict=True):
        assert np.array_equal(a, b)


def test_threads_and_auto_loader_workers():
    cfg = load_config("smoke", ["data.cache=memory"])
    assert cfg.train.threads is None and cfg.data.num_workers == "auto"
    assert available_cores() == len(os.sched_getaffinity(0))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert loader_workers(cfg, cpu) == 0  # memory cache on the CPU: workers only take the model's cores
    for cache in ("disk", "none"):
        for threads, want in ((1, 0), (2, 1), (3, 2), (16, 4)):
            c = load_config("smoke", [f"data.cache={cache}", f"train.threads={threads}"])
            assert loader_workers(c, cpu) == want
    assert loader_workers(load_config("smoke", ["train.threads=8"]), cuda) == 4
    assert loader_workers(load_config("smoke", ["data.num_workers=3"]), cpu) == 3


# large enough that holding the decoded set or per-file state in memory would show; the 20,000-image run and
# its timings are the scale benchmark's, not the test suite's
N_SCALE = 4_000


@pytest.fixture(scope="session")
def large_manifest(tmp_path_factory) -> Path:
    """N_SCALE 16x16 PNGs of two classes, two images per patient."""
    root = tmp_path_factory.mktemp("scale")
    rng = np.random.default_rng(1)
    names = []
    for i in range(N_SCALE):
        sub = root / f"d{i // 1000:02d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(sub / f"{i:05d}.png")
        names.append(f"{sub.name}/{i:05d}.png")
    return _write_manifest(root, names)


def _dry_run(manifest: Path, cache: Path, run: Path) -> str:
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", "smoke", "--set", f"data.manifest={manifest}",
           "--set", "data.demo=null", "--set", "data.cache=disk", "--set", f"data.cache_dir={cache}",
           "--set", "data.image_size=32", "--set", "data.min_size=8", "--output-dir", str(run), "--dry-run"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_large_dry_run_with_a_disk_cache_stays_small_and_the_second_is_served_from_the_cache(
        large_manifest, tmp_path):
    cache = tmp_path / "cache"
    first = _dry_run(large_manifest, cache, tmp_path / "run1")
    # ru_maxrss: the largest resident set of any finished child (the run or one of its decode workers), in KiB
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert peak_gb < 1.5, f"peak RSS {peak_gb:.2f} GB"
    assert re.search(rf"decoded {N_SCALE} samples in [\d.]+s: 0 from the disk cache, {N_SCALE} decoded", first), first
    assert f"dry run: config and data are valid; {N_SCALE} samples" in first
    second = _dry_run(large_manifest, cache, tmp_path / "run2")
    assert re.search(rf"decoded {N_SCALE} samples in [\d.]+s: {N_SCALE} from the disk cache, 0 decoded", second), second
    assert (tmp_path / "run1" / "splits.json").read_text() == (tmp_path / "run2" / "splits.json").read_text()


def test_cache_tool_prunes_by_last_use_and_size_and_never_what_a_running_job_may_read(tmp_path, capsys):
    from pipeline.data.cache import DiskCache
    from pipeline.tools.cache import main as cache_main

    root = tmp_path / "cache"
    cache = DiskCache(root, {"image_size": 8})
    now, day = time.time(), 86400
    ages = {"a.png": 100, "b.png": 40, "c.png": 10, "d.png": 0.01}  # days since last use; d: a job running now
    made = {}
    for name, age in ages.items():
        (tmp_path / name).write_bytes(b"x")
        entry = cache.entry(str(tmp_path / name), None)
        cache.write(entry, np.zeros((1, 8, 8), np.uint16))
        os.utime(entry, (now - age * day,) * 2)
        made[name] = entry
    stale = root / "v0" / "ab" / "old.npy"  # an older reader version: never looked up again
    stale.parent.mkdir(parents=True)
    shutil.copy(made["a.png"], stale)
    os.utime(stale, (now - 2 * day,) * 2)
    killed = made["a.png"].parent / ".tmp-killed.npy"  # a writer killed two days ago
    shutil.copy(made["a.png"], killed)
    os.utime(killed, (now - 2 * day,) * 2)
    size = made["a.png"].stat().st_size

    assert cache_main(["--cache-dir", str(root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["entries"], rep["older_reader_versions"]["entries"], rep["temporary_files"]) == (4, 1, 1)
    assert rep["days_since_use"]["max"] == pytest.approx(100, abs=0.01)

    assert cache_main(["--cache-dir", str(root), "--unused-days", "30", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["would_delete"]["entries"] == 4  # a, b, v0, the temporary file
    assert all(p.exists() for p in [*made.values(), stale, killed])

    assert cache_main(["--cache-dir", str(root), "--unused-days", "30"]) == 0
    assert "deleted 4 entries" in capsys.readouterr().out
    assert [n for n, p in made.items() if p.exists()] == ["c.png", "d.png"]
    assert not stale.exists() and not killed.exists()

    # a size cap deletes the least recently used first, but never an entry used in the last hour
    assert cache_main(["--cache-dir", str(root), "--max-gb", str(size / 1e9), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["after"] == {"entries": 1, "gb": round(size / 1e9, 3)}
    assert [n for n, p in made.items() if p.exists()] == ["d.png"]
    assert cache_main(["--cache-dir", str(root), "--max-gb", "0"]) == 0 and made["d.png"].exists()
    assert cache_main(["--cache-dir", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
