"""A short speed probe for planning: seconds per image of a full-stage training step and of an eval forward
pass, measured on this machine's device at two image sizes, extrapolated to others.

Cost grows with the pixel count, plus a fixed part per image (per-sample overheads); two sizes fit
t(s) = a + b * s^2 for both. The probe uses random pixels and a real optimiser step of the configured model
(1-channel stem, bundled weights, AdamW, channels_last as training uses it), so it measures what the run will
pay per image, less the data pipeline's share (the planner scales it, see planner.PIPELINE_FACTOR).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from pipeline.model.models import build_model
from pipeline.schema import ModelConfig
from pipeline.threads import available_cores

# the sizes a plan may time: the first alone prices every image up to it (in proportion to the pixels below it),
# so the planner times the second only when a plan chose images above the first (tools/plan.make_plan)
PROBE_SIZES = (128, 224)


@dataclass(frozen=True)
class SpeedProbe:
    backbone: str
    device: str
    threads: int
    sizes: tuple[int, ...]
    train_s_per_image: tuple[float, ...]  # full stage (all layers train), per size
    infer_s_per_image: tuple[float, ...]
    seconds: float  # what the probe itself took

    def _fit(self, values: tuple[float, ...], size: int) -> float:
        """Linear in the pixel count between the probed sizes (exact at each), the nearest segment's slope past
        the largest, in proportion to the pixels below the smallest. A least-squares a + b x pixels clamped at
        a >= 0 overstated 128 px by half on 2 CPU threads, where 224 px costs more than its pixels."""
        px = [s * s for s in self.sizes]
        if len(values) == 1 or size * size <= px[0]:
            return values[0] * size * size / px[0]
        k = next((i for i in range(1, len(px)) if size * size <= px[i]), len(px) - 1)
        slope = (values[k] - values[k - 1]) / (px[k] - px[k - 1])
        return max(values[k - 1] + slope * (size * size - px[k - 1]), values[0] * size * size / px[0])

    def train_time(self, size: int) -> float:
        return self._fit(self.train_s_per_image, size)

    def infer_time(self, size: int) -> float:
        return self._fit(self.infer_s_per_image, size)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_sizes(self, other: SpeedProbe) -> SpeedProbe:
        """This probe and `other` (the same model, device and threads at other sizes) as one, sizes in order."""
        rows = sorted(zip(self.sizes + other.sizes, self.train_s_per_image + other.train_s_per_image,
                          self.infer_s_per_image + other.infer_s_per_image, strict=True))
        sizes, train, infer = (tuple(column) for column in zip(*rows, strict=True))
        return replace(self, sizes=sizes, train_s_per_image=train, infer_s_per_image=infer,
                       seconds=round(self.seconds + other.seconds, 1))


def best_threads(backbone: str, device: torch.device, size: int = 128, batch: int = 8) -> tuple[int, dict]:
    """On a CPU: 1 thread or every core the process may use, whichever trains faster now. On a CPU shared with
    busy processes all cores can be many times slower than one (a thread that is not scheduled stalls every
    parallel region); on an idle one all cores win. (chosen threads, {threads: s per image})."""
    cores = available_cores()
    if device.type != "cpu" or cores == 1:
        return cores, {}
    times = {}
    saved = torch.get_num_threads()
    try:
        for n in (1, cores):
            torch.set_num_threads(n)
            # a short look: 1 thread against all cores differ by far more than the ramp-up
            times[n] = _probe(backbone, device, batch, (size,), warmup_s=0.5, measure_s=0.5).train_s_per_image[0]
    finally:
        torch.set_num_threads(saved)
    return min(times, key=times.get), times


# A step's speed ramps up over its first seconds in a new process (allocator, kernel choice, the CPU's clock) and
# then wanders with the machine's other tenants: one process on 2 idle cores went 16, 28, 55, 53, 77 img/s over
# its first five steps and 80-129 after them; four steps after one warm-up put probes of one model at 56-87 img/s
# while the runs they planned trained at about 80. So: warm up for WARMUP_S, then time steps for MEASURE_S and
# take the median step, the speed a run sustains (the mean would let one stalled step move the plan).
WARMUP_S, MEASURE_S = 2.0, 3.0
MIN_STEPS, MAX_STEPS = 5, 50


def _timed(step, warmup_s: float = WARMUP_S, measure_s: float = MEASURE_S, min_steps: int = MIN_STEPS) -> float:
    """Median seconds of one `step` after `warmup_s` of warm-up (at least one step), over at least `min_steps`
    steps and `measure_s` seconds (at most MAX_STEPS steps: a GPU's steps are milliseconds)."""
    start = time.perf_counter()
    step()
    while time.perf_counter() - start < warmup_s:
        step()
    times, start = [], time.perf_counter()
    while len(times) < MAX_STEPS and (len(times) < min_steps or time.perf_counter() - start < measure_s):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# the planner's batch: a step's fixed costs (the optimiser over every weight, Python) are shared by its images,
# so a smaller probe batch overstates the cost per image (batch 8 did by a third at 64 px on NIH, docs/plan.md)
PROBE_BATCH = 32


def probe_speed(backbone: str, device: torch.device, *, threads: int | None = None, batch: int = PROBE_BATCH,
                sizes: tuple[int, ...] = PROBE_SIZES) -> SpeedProbe:
    """`threads`: torch threads while probing, as the run will use them (train.threads or every core it may
    use: pipeline/threads.py); restored afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or available_cores())
    try:
        return _probe(backbone, device, batch, sizes)
    finally:
        torch.set_num_threads(saved)


def _probe(backbone: str, device: torch.device, batch: int, sizes: tuple[int, ...], warmup_s: float = WARMUP_S,
           measure_s: float = MEASURE_S) -> SpeedProbe:
    start = time.perf_counter()
    model = build_model(ModelConfig(backbone=backbone, pretrained="bundled", stem="auto"), 1).model.to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train, infer = [], []
    for size in sizes:
        x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,), device=device).float()

        def train_step(x=x, y=y):
            model.train()
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()

        def infer_step(x=x):
            model.eval()
            with torch.inference_mode():
                model(x)
            sync()

        train.append(_timed(train_step, warmup_s, measure_s) / batch)
        # inference is a small share of a run's time (a forward pass per image per epoch): half the look
        infer.append(_timed(infer_step, warmup_s / 2, measure_s / 2) / batch)
    return SpeedProbe(backbone=backbone, device=str(device), threads=torch.get_num_threads(), sizes=tuple(sizes),
                      train_s_per_image=tuple(train), infer_s_per_image=tuple(infer),
                      seconds=round(time.perf_counter() - start, 1))
