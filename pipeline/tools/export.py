"""Export a run's fold ensemble (or one fold) for deployment: ONNX by default, with metadata and a model card.

    graystem export RUN_DIR [--format onnx|exported-program|torchscript|monai-bundle] [--fold K | --ensemble]
                            [--input gray|rgb] [--out DIR_OR_FILE]

The exported model is inference.EnsembleModule: (B, 1, S, S) float32 pixels in [0, 1] (after the run's load
transforms, S = data.image_size) -> the run's normalisation (inside the graph, so a deployment cannot apply
timm's 3-channel ImageNet statistics by mistake) -> mean of the fold models' probabilities, one column per class.
The batch axis is dynamic. `--input rgb` takes (B, 3, S, S) RGB instead: the 1-channel stem conv is expanded back
to three channels with Rec. 601 weights, w_c = lambda_c * w, so an RGB frame gives the 1-channel model's output on
its luminance (normalisation is a scalar mean/std and sum(lambda) = 1, so it commutes).

Formats: `onnx` (torch.onnx.export, dynamo; needs the `export` extra: onnx, onnxscript; checked with onnxruntime
when installed), `exported-program` (torch.export -> .pt2, load with torch.export.load), `torchscript` (legacy,
torch.jit.trace), `monai-bundle` (MONAI bundle layout, TorchScript model, see pipeline.deploy.bundle). Every format
writes metadata.json and model_card.md beside the model. `--out` is a folder (default RUN_DIR/export/<format>),
or for the single-file formats a file name ending .onnx / .pt2 / .ts whose folder gets the metadata.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.deploy.finished import FinishedRun, load_run
from pipeline.deploy.inference import EnsembleModule, run_tta
from pipeline.deploy.modelcard import export_metadata, write_metadata_and_card
from pipeline.errors import ConfigError, exits_on_error
from pipeline.model.stems import RepeatChannels, stem_conv
from pipeline.vocab import LUMA_REC601

FORMATS = ("onnx", "exported-program", "torchscript", "monai-bundle")
SUFFIX = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".ts"}
BY_SUFFIX = {v: k for k, v in SUFFIX.items()}


class LumaInput(nn.Module):
    """(B, 3, H, W) RGB -> Rec. 601 luminance (B, 1, H, W): the graph-level RGB input for stems whose conv is not
    a plain 1-channel conv (the `repeat` stem replicates the grey image inside the model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("luma", torch.tensor(LUMA_REC601, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x):
        return self.model((x * self.luma).sum(1, keepdim=True))


def rgb_stem(model: nn.Module) -> nn.Module:
    """A copy of a 1-channel model that takes RGB: stem weight[:, c] = lambda_c * w[:, 0]. FoldedStem's
    correction map does not depend on the input, so it stays valid; `repeat` stems get LumaInput instead."""
    model = copy.deepcopy(model)
    name, conv = stem_conv(model)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
    if isinstance(parent, RepeatChannels) or conv.in_channels != 1:
        return LumaInput(model)
    luma = torch.tensor(LUMA_REC601, dtype=conv.weight.dtype, device=conv.weight.device).view(1, 3, 1, 1)
    conv.weight = nn.Parameter((conv.weight.detach() * luma).contiguous())
    conv.in_channels = 3
    return model


def export_module(run: FinishedRun, input_kind: str = "gray") -> EnsembleModule:
    models = run.models()
    if input_kind == "rgb":
        models = [rgb_stem(m).eval() for m in models]
    return EnsembleModule(models, run.normalization, run.task, run.deployment.temperature, run_tta(run)).eval()


def example_input(run: FinishedRun, input_kind: str, batch: int = 2) -> torch.Tensor:
    size = run.deployment.image_size
    return torch.rand(batch, 3 if input_kind == "rgb" else 1, size, size, generator=torch.Generator().manual_seed(0))


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def to_exported_program(module: nn.Module, example: torch.Tensor):
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=_dynamic_batch())


def to_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    for dep in ("onnx", "onnxscript"):
        try:
            __import__(dep)
        except ImportError:
            raise ConfigError(f"--format onnx needs {dep}: pip install -e '.[export]'") from None
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False,
                          input_names=["image"], output_names=["probabilities"], dynamic_shapes=_dynamic_batch(),
                          verbose=False)


def to_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    # torch.jit.script cannot compile timm's models (dynamic Python in their forward): tracing is the legacy route
    with torch.no_grad():
        torch.jit.trace(module, example).save(str(path))


def run_exported(fmt: str, path: Path, x: torch.Tensor):
    """Probabilities of the exported file on x, loaded the way a deployment loads it (None: no runtime here)."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    if fmt == "exported-program":
        return torch.export.load(str(path)).module()(x)
    return torch.jit.load(str(path))(x)


def _targets(out: Path | None, run_dir: Path, fmt: str) -> tuple[Path, Path]:
    """(folder for metadata, model file)."""
    if fmt == "monai-bundle":
        folder = out or run_dir / "export" / "monai-bundle"
        return folder, folder / "models" / "model.ts"
    if out is not None and out.suffix:
        if out.suffix != SUFFIX[fmt]:
            raise ConfigError(f"--out {out}: a {fmt} file ends with {SUFFIX[fmt]}")
        return out.parent, out
    folder = out or run_dir / "export" / fmt
    return folder, folder / f"model{SUFFIX[fmt]}"


def export(run_dir: Path, out: Path | None = None, fold: int | None = None, fmt: str = "onnx",
           input_kind: str = "gray", check: bool = True, say=print) -> dict:
    """Write the model, metadata.json and model_card.md; returns the metadata (with 'max_abs_diff')."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    folder, model_path = _targets(out, run_dir, fmt)
    steps, t0 = 4, time.perf_counter()

    def step(k, text):
        say(f"[{k}/{steps}] {text}", flush=True)
        return time.perf_counter()

    t = step(1, f"loading {'fold ' + str(fold) if fold is not None else 'the fold models'} of {run_dir} ...")
    run = load_run(run_dir, folds=None if fold is None else [fold])
    module = export_module(run, input_kind)
    example = example_input(run, input_kind)
    say(f"      {len(run.checkpoints)} model(s), {run.checkpoints[0].model.backbone}, input "
        f"{tuple(example.shape[1:])} ({time.perf_counter() - t:.1f} s)")

    t = step(2, f"exporting {fmt} to {model_path} ...")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        to_onnx(module, example, model_path)
    elif fmt == "exported-program":
        torch.export.save(to_exported_program(module, example), str(model_path))
    else:
        to_torchscript(module, example, model_path)
    say(f"      {model_path.stat().st_size / 1e6:.1f} MB ({time.perf_counter() - t:.1f} s)")

    t = step(3, "checking the exported model against PyTorch (batch 1 and 3) ...")
    diff = None
    if check:
        diffs = []
        for b in (1, 3):
            x = example_input(run, input_kind, b)
            got = run_exported(fmt, model_path, x)
            if got is None:
                break
            with torch.no_grad():
                diffs.append(float((got - module(x)).abs().max()))
        diff = max(diffs) if diffs else None
    say("      " + ("skipped (onnxruntime not installed)" if diff is None else f"max abs difference {diff:.2e}")
        + f" ({time.perf_counter() - t:.1f} s)")

    t = step(4, "writing metadata.json and model_card.md ...")
    files = {"model": str(model_path.relative_to(folder))}
    meta = export_metadata(run, fmt=fmt, input_kind=input_kind, files=files)
    meta["parity_max_abs_diff"] = diff
    _, card = write_metadata_and_card(folder, meta)
    if fmt == "monai-bundle":
        from pipeline.deploy.bundle import write_bundle

        write_bundle(run, folder, meta, card.read_text())
    say(f"      {folder} ({time.perf_counter() - t:.1f} s); total {time.perf_counter() - t0:.1f} s")
    meta["folder"] = str(folder)
    return meta


@exits_on_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--format", dest="fmt", choices=FORMATS,
                    help="default: from --out's suffix (.onnx/.pt2/.ts), else onnx")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, help="export this fold's model")
    which.add_argument("--ensemble", action="store_true", help="the mean of all fold models (default)")
    ap.add_argument("--input", dest="input_kind", choices=["gray", "rgb"], default="gray",
                    help="rgb: accept (B, 3, S, S) RGB, weighted to Rec. 601 luminance by the stem")
    ap.add_argument("--out", type=Path, help="output folder, or a model file name (.onnx, .pt2, .ts)")
    ap.add_argument("--no-check", action="store_true", help="skip the parity check of the exported file")
    args = ap.parse_args(argv)
    fmt = args.fmt or BY_SUFFIX.get(args.out.suffix if args.out else "", "onnx")
    if fmt == "monai-bundle" and args.input_kind == "rgb":  # its GrayReader feeds grey frames
        raise ConfigError("--input rgb: a monai-bundle reads files with GrayReader and takes grey input only")
    meta = export(args.run_dir, args.out, args.fold, fmt, args.input_kind, check=not args.no_check)
    print(f"wrote {meta['folder']}: {meta['files']['model']} ({len(meta['model']['folds'])} model(s), "
          f"classes {meta['task']['classes']}), metadata.json, model_card.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
