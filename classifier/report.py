"""Text views of evaluation metrics: the key table printed on the terminal and ``report.md``."""
from __future__ import annotations


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def _ci(v, ci) -> str:
    return _pct(v) + (f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else "")


def key_table(m: dict, classes: tuple[str, ...]) -> str:
    """Per-class sensitivity, specificity (with intervals), precision, F1 and AUC, in percent."""
    lines = [f"{m['split']} split: {m['n']} images of {m['n_groups']} patients, accuracy "
             f"{_ci(m['accuracy'], m['accuracy_ci'])} % ({100 * m['ci_level']:.0f} % bootstrap intervals over patients)",
             f"{'class':<12} {'n':>5} {'sensitivity':>22} {'specificity':>22} {'precision':>9} {'F1':>6} {'AUC':>6}"]
    for c in classes:
        p = m["per_class"][c]
        lines.append(f"{c:<12} {p['support']:>5} {_ci(p['sensitivity'], p['sensitivity_ci']):>22} "
                     f"{_ci(p['specificity'], p['specificity_ci']):>22} {_pct(p['precision']):>9} "
                     f"{_pct(p['f1']):>6} {_pct(p['auc']):>6}")
    mac = m["macro"]
    lines.append(f"{'macro':<12} {m['n']:>5} {_pct(mac['sensitivity']):>22} {_pct(mac['specificity']):>22} "
                 f"{_pct(mac['precision']):>9} {_pct(mac['f1']):>6} {_pct(mac['auc']):>6}")
    if "binary" in m:
        lines.append(binary_line(m["binary"]))
    return "\n".join(lines)


def binary_line(b: dict) -> str:
    """The covid-vs-rest AUC and the operating point chosen on validation data, or why there is none."""
    head = f"{b['positive_class']} vs rest: AUC {_ci(b['auc'], b['auc_ci'])}"
    op = b["operating_point"]
    if op is None:
        return f"{head}; no operating point at specificity {_pct(b['specificity_target'])}: {b['no_operating_point']}"
    v = op["validation"]
    return (f"{head}; at the threshold {op['threshold']:.3f} chosen on validation for specificity ≥ "
            f"{_pct(b['specificity_target'])} (validation: sensitivity {_pct(v['sensitivity'])}, specificity "
            f"{_pct(v['specificity'])}), test sensitivity {_ci(op['sensitivity'], op['sensitivity_ci'])}, "
            f"specificity {_ci(op['specificity'], op['specificity_ci'])}")


def markdown_report(m: dict, classes: tuple[str, ...]) -> str:
    """The whole evaluation as Markdown: tables, binary view, sources, CAM faithfulness, figures."""
    rows = ["| class | n | sensitivity | specificity | precision | F1 | AUC |", "|---|---|---|---|---|---|---|"]
    for c in classes:
        p = m["per_class"][c]
        rows.append(f"| {c} | {p['support']} | " + " | ".join(_ci(p[k], p[f"{k}_ci"]) for k in
                                                                 ("sensitivity", "specificity", "precision", "f1", "auc"))
                    + " |")
    mac = m["macro"]
    rows.append(f"| macro | {m['n']} | {_pct(mac['sensitivity'])} | {_pct(mac['specificity'])} | "
                f"{_pct(mac['precision'])} | {_ci(mac['f1'], mac['f1_ci'])} | {_ci(mac['auc'], mac['auc_ci'])} |")
    conf = ["| true \\ predicted | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    conf += [f"| {c} | " + " | ".join(map(str, row)) + " |" for c, row in zip(classes, m["confusion"])]
    parts = [f"# Evaluation\n\nCheckpoint `{m['checkpoint']}` on the **{m['split']}** split of `{m['data']}` "
             f"({m['n']} images). Values in percent with {100 * m['ci_level']:.0f} % intervals from a bootstrap over "
             f"{m['n_groups']} patients (groups), {m['bootstrap_rounds']} resamples: all images of a patient are drawn "
             f"together, so the intervals allow for images of one patient being alike.\n\nAccuracy: **{_ci(m['accuracy'], m['accuracy_ci'])}**\n",
             "\n".join(rows), "\n## Confusion matrix\n", "\n".join(conf)]
    if m.get("absent_classes"):
        parts.insert(1, f"No image of class {', '.join(m['absent_classes'])} in this set: their sensitivity and AUC "
                        "are undefined (n/a), the macro figures average the classes present.\n")
    if "calibration" in m:
        c = m["calibration"]
        parts.append(f"\n## Calibration\n\nExpected calibration error of the highest probability (15 bins): "
                     f"**{_ci(c['ece'], c['ece_ci'])}**; Brier score {c['brier']:.3f}"
                     + (f" [{c['brier_ci'][0]:.3f}, {c['brier_ci'][1]:.3f}]" if c["brier_ci"] else "")
                     + " (0 is perfect; always 1/3 scores 0.667 with three classes). Reliability diagram: `reliability.png`.")
    if "binary" in m:
        b, op = m["binary"], m["binary"]["operating_point"]
        chosen = (f"; the threshold was chosen on {op['validation']['n_positive']} positive and "
                  f"{op['validation']['n_negative']} negative validation images ({op['validation']['n_groups']} "
                  "patients) and applied unchanged to the test images" if op else "")
        parts.append(f"\n## {b['positive_class']} vs rest\n\n{binary_line(b)}.\n\n{b['n_positive']} positive, "
                     f"{b['n_negative']} negative test images{chosen}.")
    if "per_source" in m:
        src = ["\n## Per source\n", "| source | n | patients | accuracy | " + " | ".join(f"sens. {c}" for c in classes) + " |",
               "|---" * (len(classes) + 4) + "|"]
        src += [f"| {s} | {v['n']} | {v['n_groups']} | {_ci(v['accuracy'], v['accuracy_ci'])} | "
                + " | ".join(_pct(v["sensitivity"][c]) for c in classes) + " |" for s, v in m["per_source"].items()]
        parts.append("\n".join(src))
    if "cam" in m:
        c = m["cam"]
        parts.append(f"\n## Class activation maps\n\n{c['images']} overlays ({c['method']}) in `cam/`. Faithfulness "
                     f"(image reduced to its map): average drop {c['average_drop_pct']:.1f} %, increase in "
                     f"confidence {c['increase_in_confidence_pct']:.1f} % of images.")
    parts.append("\n![confusion](confusion.png) ![ROC](roc.png) ![PR](pr.png)\n")
    return "\n".join(parts) + "\n"
