"""RUN/checklist.md: the TRIPOD+AI (Collins et al., BMJ 2024) and CLAIM 2024 (Tejani et al., Radiol AI) items
that a run can answer itself, each filled with the run's own values and where in the run folder they are, and the
items only the authors can write, listed as open. Items are named by the guidelines' sections; a paper still
fills in the full numbered checklists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.runfolder import RunFolder


@dataclass(frozen=True)
class Item:
    topic: str
    guideline: str  # the guidelines' sections (the numbered items are in the published checklists)
    answer: str
    where: str


OPEN = (
    ("Clinical setting, intended use and users of the model", "TRIPOD+AI background/objectives; CLAIM introduction"),
    ("Source of data and dates of collection, eligibility criteria of patients", "TRIPOD+AI data, participants; CLAIM data"),
    ("Reference standard: how the labels were established, by whom, and its known errors", "TRIPOD+AI outcome; CLAIM ground truth"),
    ("Sample size rationale", "TRIPOD+AI sample size; CLAIM data partitions"),
    ("External validation on data from another site or time", "TRIPOD+AI evaluation; CLAIM evaluation"),
    ("Fairness considerations beyond the subgroups measured, and patient/public involvement", "TRIPOD+AI fairness, patient and public involvement"),
    ("Data and code availability, registration, funding and conflicts of interest", "TRIPOD+AI open science; CLAIM other information"),
)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(block: dict, key: str) -> str:
    c = (block.get("ci95") or {}).get(key)
    return f"{_f(block.get(key))} (95% CI {c[0]:.3f}-{c[1]:.3f})" if c else _f(block.get(key))


def _split_counts(folder: RunFolder) -> str:
    path = folder.splits
    if not path.is_file():
        return "splits.json missing"
    s = json.loads(path.read_text())
    folds = ", ".join(f"fold {f['fold']}: {len(f['train_patients'])} train / {len(f['val_patients'])} validation "
                      "patients" for f in s["folds"])
    return f"{folds}; test: {len(s['test_patients'])} patients"


def items(summary: dict, cfg, folder: RunFolder) -> list[Item]:
    prov, model, oof, test = summary.get("provenance") or {}, summary["model"], summary["oof"], summary.get("test")
    n_skipped = summary.get("n_skipped", 0)
    stages = "; ".join(f"{s.name}: {s.train}, {s.epochs} epochs, lr {s.lr:g}, {s.optimizer}, {s.scheduler}"
                       for s in cfg.train.stages)
    out = [
        Item("Data source and manifest", "TRIPOD+AI data; CLAIM data",
             f"`{prov.get('manifest')}`, sha256 {prov.get('manifest_sha256')}", "summary.json provenance"),
        Item("Inclusion and exclusion of images", "TRIPOD+AI participants (flow); CLAIM data, results",
             f"{summary['n_samples']} samples used, {n_skipped} inputs skipped (unreadable or excluded), "
             f"data.exclude {list(cfg.data.exclude) or 'none'}, data.on_error {cfg.data.on_error}",
             folder.SKIPPED if folder.skipped.is_file() else "summary.json n_skipped"),
        Item("Patients and images per split", "TRIPOD+AI participants; CLAIM data partitions",
             f"{summary['n_patients']} patients, {summary['n_samples']} samples; out-of-fold {oof.get('n')} images of "
             f"{oof.get('n_patients')} patients" + (f"; test {test['n']} images of {test.get('n_patients')} "
                                                    "patients" if test else "; no held-out test set")
             + f". {_split_counts(folder)}", "splits.json, summary.json"),
        Item("Outcome classes and their prevalence", "TRIPOD+AI outcome; CLAIM ground truth",
             f"{summary['type']} task, classes {summary['classes']}; out-of-fold prevalence "
             f"{_f(oof.get('prevalence'))}" + (f", test {_f(test.get('prevalence'))}" if test else ""),
             "summary.json oof / test"),
        Item("Handling of missing patient ids", "TRIPOD+AI missing data; CLAIM data",
             f"patient ids from: {summary.get('patient_source')} (images without an id count as their own patient)",
             "summary.json patient_source"),
        Item("How data were partitioned", "TRIPOD+AI analytical methods; CLAIM data partitions",
             f"{len(summary['folds'])}-fold cross-validation grouped by patient and stratified by label "
             f"(StratifiedGroupKFold or the manifest's fold column), seed {cfg.cv.seed}; test set: manifest "
             f"split column or cv.test_fraction {cfg.cv.test_fraction}", "splits.json, config.yaml"),
        Item("Duplicates and label checks", "TRIPOD+AI data preparation; CLAIM data",
             f"identical files are checked at start (data.duplicates: {cfg.data.duplicates}); near duplicates and "
             "suspect labels: " + ("see the audit report in this folder" if list(folder.root.glob("audit*"))
                                   else "not run here (graystem audit --config ...)"), "run log, audit.md"),
        Item("Model and pretraining", "TRIPOD+AI analytical methods; CLAIM model",
             f"{model['backbone']}, {model['pretrained']} weights, {model['stem']} 1-channel stem, input "
             f"normalisation {model.get('normalization')}", "summary.json model, fold_K/best.pt"),
        Item("Training recipe", "TRIPOD+AI analytical methods; CLAIM training",
             f"image size {cfg.data.image_size}, batch {cfg.train.batch_size}, stages: {stages}; best epoch per fold "
             f"by validation {cfg.train.monitor}; seeds {cfg.train.seed} (x{cfg.train.repeats})",
             "config.yaml, fold_K/result.json"),
        Item("Performance measures with confidence intervals", "TRIPOD+AI model performance; CLAIM evaluation, results",
             (f"test AUROC {_ci(test, 'auroc')}, sensitivity {_ci(test, 'sensitivity')}, specificity "
              f"{_ci(test, 'specificity')} at threshold {summary['threshold']:.3f} (chosen on out-of-fold)"
              if test else f"out-of-fold AUROC {_f(oof.get('auroc'))} (no test set)"),
             "summary.json test.ci95, report.md"),
    ]
    cal = summary.get("calibration") or {}
    where = "test" if "test" in cal else "oof"
    if where in cal:
        out.append(Item("Calibration", "TRIPOD+AI model performance; CLAIM evaluation",
                        f"{cal['method']} (T = {', '.join(f'{v:.3f}' for v in cal.get('temperature') or []) or 'none'}); {where} ECE {_f(cal[where]['before']['ece'])} "
                        f"-> {_f(cal[where]['after']['ece'])}, Brier {_f(cal[where]['before']['brier'])} -> "
                        f"{_f(cal[where]['after']['brier'])}", "summary.json calibration, reliability.png"))
    sub = summary.get("subgroups")
    out.append(Item("Performance in subgroups (fairness)", "TRIPOD+AI fairness; CLAIM evaluation",
                    (f"by {', '.join(sub['attributes'])}: {sum(1 for r in sub.get(where) or [] if not r['too_small'])} "
                     f"groups estimated, {sum(1 for r in sub.get(where) or [] if r['too_small'])} too small "
                     f"(< {sub['min_n']} images)") if sub else "not requested (report.subgroups)",
                    "summary.json subgroups, subgroups_forest.png" if sub else "config.yaml report"))
    dc = (summary.get("decision_curve") or {}).get(where)
    if dc:
        from pipeline.results.clinical_report import ranges

        out.append(Item("Clinical utility (decision curve)", "TRIPOD+AI model performance (clinical utility)",
                        f"{where}: net benefit above treat-all and treat-none at threshold probabilities "
                        f"{ranges(dc.get('useful_ranges'))}",
                        "summary.json decision_curve, decision_curve.png"))
    conf = (summary.get("conformal") or {}).get(where)
    if conf:
        out.append(Item("Uncertainty of individual predictions", "TRIPOD+AI model output; CLAIM evaluation",
                        f"conformal sets at alpha {summary['conformal']['alpha']}: {where} coverage "
                        f"{conf['coverage']:.3f}, {conf['single']:.0%} single-label",
                        "summary.json conformal, test_predictions.csv sd_* columns"))
    out.append(Item("Software and environment", "TRIPOD+AI open science; CLAIM model",
                    f"git {prov.get('git_commit')}, config sha256 {prov.get('config_sha256')}",
                    "summary.json provenance"))
    return out


def markdown(summary: dict, cfg, folder: RunFolder) -> str:
    lines = [f"# Reporting checklist: {summary['task']}", "",
             "Items of TRIPOD+AI (2024) and CLAIM (2024) this run answers itself, with its values and where they "
             "are in this folder. The open items at the end are for the authors.", "",
             "| item | guideline | this run | where |", "|---|---|---|---|"]
    for it in items(summary, cfg, folder):
        lines.append(f"| {it.topic} | {it.guideline} | {it.answer.replace('|', '/')} | {it.where} |")
    lines += ["", "## Open: for the authors to write", ""]
    lines += [f"- [ ] {topic} ({ref})" for topic, ref in OPEN]
    return "\n".join(lines) + "\n"


def write_checklist(folder: RunFolder, summary: dict, cfg) -> None:
    RunFolder.write_text(folder.checklist, markdown(summary, cfg, folder))
