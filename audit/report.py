"""Text views of an audit (:func:`audit.run.run_audit`'s results): one plain sentence per check, the key
table printed on the terminal, and ``audit.md``."""
from __future__ import annotations

GUIDE = """## How to read it, and its limits

- **CAM inside the lungs.** A map that ignores anatomy puts as much of its mass inside the lungs as they
  cover of the image, and its peak there as often; only a share clearly above the lung area says the map
  favours the lungs. Majeed et al. (2020) found published COVID-19 models' maps outside the lungs.
- **Source probe.** If a linear probe names the hospital (the `source` column) from the classifier's pooled
  features well above always guessing the commonest source, the features carry it, and a source that differs
  between classes is a shortcut the model can learn (DeGrave et al., Nat. Mach. Intell. 2021). Within a class
  the source says nothing about the disease, so any skill there is pure shortcut. Patients are never split
  between the probe's folds.
- **Lungs hidden.** Maguolo and Nanni (2021) reached similar accuracy with the lungs blacked out: accuracy
  clearly above chance (and above always naming the commonest class) with the lungs hidden means the model
  uses something outside them. Hidden images are unlike any training image, so some loss of accuracy is
  expected even from a model that looks everywhere.
- **By source.** A source classified best as it is and also with the lungs hidden is where shortcuts pay.
- **Limits.** The masks are the segmenter's, not a radiologist's: its errors (check its Dice in its
  `metrics.json` and its masks with `lungseg`) move every number here. A CAM is as coarse as the last
  feature map (often 7×7 to 16×16 cells), upsampled, so mass near the lung border is blurred across it and
  small lungs favour "outside". The maps explain the predicted class. Intervals resample patients; with few
  patients they are wide.
"""
MIN_SOURCE_PATIENTS = 10  # fewer patients than this: a source's accuracy is too noisy to rank


def pct(m: dict | None) -> str:
    """A :func:`audit.checks.mean_with_interval` as ``62.0 % [55.1, 68.3]``."""
    if m is None or m["value"] is None:
        return "n/a"
    return f"{100 * m['value']:.1f} %" + (f" [{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]" if m["ci"] else "")


def points(m: dict | None) -> str:
    """A difference of shares as ``+27.0 points [+20.1, +33.0]``."""
    if m is None or m["value"] is None:
        return "n/a"
    return f"{100 * m['value']:+.1f} points" + (f" [{100 * m['ci'][0]:+.1f}, {100 * m['ci'][1]:+.1f}]" if m["ci"] else "")


def _bounds(m: dict) -> tuple[float, float]:
    return tuple(m["ci"]) if m["ci"] else (m["value"], m["value"])


def cam_sentence(c: dict, method: str) -> str:
    """Check 1 in one sentence, from ``result["cam"]["all"]``."""
    if c["share"]["value"] is None:
        return f"No {method} map has any mass, so none can be placed."
    lo, hi = _bounds(c["share_minus_area"])
    verdict = ("more than a map that ignores anatomy would: the maps favour the lungs" if lo > 0 else
               "less than a map that ignores anatomy would: the maps avoid the lungs" if hi < 0 else
               "no more than a map that ignores anatomy would")
    return (f"{pct(c['share'])} of the {method} mass lies inside the lungs, which cover {pct(c['area'])} of the "
            f"image ({points(c['share_minus_area'])}), {verdict}; the peak is inside the lungs in {pct(c['peak'])} "
            "of images.")


def probe_sentence(p: dict) -> str:
    """Check 2 in one or two sentences, from ``result["source_probe"]``."""
    a = p["all"]
    if "skipped" in a:
        text = f"Source probe not run: {a['skipped']}."
    else:
        verdict = ("the features carry the source, a shortcut the model can use" if _bounds(a["accuracy_minus_majority"])[0] > 0
                   else "no evidence that the features carry the source beyond how common each is")
        text = (f"A linear probe on the pooled features names the source of {pct(a['accuracy'])} of images "
                f"({a['folds']}-fold cross-validation, patients never split), against {pct(a['majority_rate'])} by "
                f"always guessing the commonest source ({a['majority_source']}): {points(a['accuracy_minus_majority'])}, "
                f"{verdict}.")
    within = [f"{c} {pct(v['accuracy'])} against {pct(v['majority_rate'])}" for c, v in p["per_class"].items()
              if "skipped" not in v]
    if within:
        text += " Within a class, where the source says nothing about the disease: " + "; ".join(within) + "."
    return text


def hidden_sentence(h: dict) -> str:
    """Check 3 in two sentences, from ``result["lungs_hidden"]``: clearly above guessing means the lower end
    of the interval above both chance and always naming the commonest class."""
    guessing = max(h["chance"], h["majority_rate"])
    hidden_above, kept_above = (_bounds(h[v])[0] > guessing for v in ("hidden", "kept"))
    verdict = ("Still clearly above guessing with the lungs hidden, the model uses something outside the lungs."
               if hidden_above else
               "Hiding the lungs takes it down to guessing while the lungs alone keep it above: what it uses lies in "
               "the lungs." if kept_above else
               "Neither the lungs alone nor the rest alone keeps it clearly above guessing; masked images are unlike "
               "its training images, so this check says little about this model.")
    return (f"With the lungs hidden the classifier is right on {pct(h['hidden'])} of images, with only the lungs "
            f"left on {pct(h['kept'])} (as they are: {pct(h['plain'])}; chance {100 * h['chance']:.1f} %, always "
            f"{h['majority_class']} {100 * h['majority_rate']:.1f} %). {verdict}")


def source_sentence(per_source: dict) -> str:
    """Check 4 in one sentence, from ``result["per_source"]``: sources are ranked only among those with at
    least :data:`MIN_SOURCE_PATIENTS` patients (a source of one image is always best or worst)."""
    if len(per_source) < 2:
        return (f"All images come from one source ({next(iter(per_source), 'none')}), so there is no comparison "
                "between sources.")
    ranked = {s: v for s, v in per_source.items() if v["n_groups"] >= MIN_SOURCE_PATIENTS}
    few = sorted(set(per_source) - set(ranked))
    aside = f" ({', '.join(few)}: fewer than {MIN_SOURCE_PATIENTS} patients each, not ranked)" if few else ""
    if len(ranked) < 2:
        return (f"Fewer than two sources have {MIN_SOURCE_PATIENTS} patients or more{aside}, so sources are not "
                "ranked; see the table.")

    def value(s, v):
        return ranked[s]["accuracy"][v]["value"]

    best = max(ranked, key=lambda s: value(s, "plain"))
    worst = min(ranked, key=lambda s: value(s, "plain"))
    top_hidden = max(ranked, key=lambda s: value(s, "hidden"))
    a = ranked[best]["accuracy"]
    text = (f"Accuracy is highest on {best} ({pct(a['plain'])}) and lowest on {worst} "
            f"({pct(ranked[worst]['accuracy']['plain'])}){aside}; ")
    if top_hidden == best:
        return text + (f"{best} is also the source classified best with the lungs hidden ({pct(a['hidden'])}), so its "
                       "accuracy may come from outside the lungs.")
    return text + (f"with the lungs hidden, {top_hidden} is classified best "
                   f"({pct(ranked[top_hidden]['accuracy']['hidden'])}; {best}: {pct(a['hidden'])}).")


def sentences(r: dict) -> dict[str, str]:
    """The four checks in plain sentences: ``cam``, ``source_probe``, ``lungs_hidden``, ``per_source``."""
    return {"cam": cam_sentence(r["cam"]["all"], r["method"]), "source_probe": probe_sentence(r["source_probe"]),
            "lungs_hidden": hidden_sentence(r["lungs_hidden"]), "per_source": source_sentence(r["per_source"])}


def _probe_cells(p: dict) -> str:
    if "skipped" in p:
        return f"skipped: {p['skipped']} | | | | "
    return (f"{p['n']} | {p['n_groups']} | {pct(p['accuracy'])} | {pct(p['majority_rate'])} ({p['majority_source']}) | "
            f"{points(p['accuracy_minus_majority'])}")


def key_table(r: dict) -> str:
    """The headline of each check and the per-source table, for the terminal, then the four sentences."""
    h, c, p = r["lungs_hidden"], r["cam"]["all"], r["source_probe"]["all"]
    probe = (f"skipped: {p['skipped']}" if "skipped" in p else
             f"{pct(p['accuracy']):<24} always {p['majority_source']}: {pct(p['majority_rate'])}")
    lines = [f"audit of {r['checkpoint']}: {r['split']} split, {r['n']} images of {r['n_groups']} patients, {r['method']}; "
             f"{100 * r['ci_level']:.0f} % intervals over patients",
             f"{'CAM mass inside the lungs':<30} {pct(c['share']):<24} lung area {pct(c['area'])}",
             f"{'CAM peak inside the lungs':<30} {pct(c['peak']):<24} lung area {pct(c['area'])}",
             f"{'source from features (probe)':<30} {probe}",
             f"{'accuracy as they are':<30} {pct(h['plain'])}",
             f"{'accuracy, lungs hidden':<30} {pct(h['hidden']):<24} chance {100 * h['chance']:.1f} %, always "
             f"{h['majority_class']} {100 * h['majority_rate']:.1f} %",
             f"{'accuracy, only the lungs':<30} {pct(h['kept'])}",
             f"{'source':<16} {'n':>5} {'accuracy':>24} {'lungs hidden':>24} {'CAM mass in lungs':>24}"]
    for s, v in r["per_source"].items():
        lines.append(f"{s:<16} {v['n']:>5} {pct(v['accuracy']['plain']):>24} {pct(v['accuracy']['hidden']):>24} "
                     f"{pct(v['cam']['share']):>24}")
    return "\n".join(lines + [""] + [f"{k + 1}. {s}" for k, s in enumerate(r["sentences"].values())])


def markdown_report(r: dict) -> str:
    """The whole audit as Markdown: what was audited, each check with its sentence and table, the figures,
    and how to read it."""
    s, h = r["sentences"], r["lungs_hidden"]
    cam_rows = ["| images | n | CAM mass inside the lungs | peak inside the lungs | lung area | mass − area |",
                "|---|---|---|---|---|---|"]
    for label, part in [("all", {"all": r["cam"]["all"]}), ("class", r["cam"]["per_class"]),
                        ("source", r["cam"]["per_source"])]:
        for name, v in part.items():
            cam_rows.append(f"| {name if label == 'all' else f'{label} {name}'} | {v['share']['n']} | {pct(v['share'])} | "
                            f"{pct(v['peak'])} | {pct(v['area'])} | {points(v['share_minus_area'])} |")
    probes = {"all": r["source_probe"]["all"], **{f"class {c}": v for c, v in r["source_probe"]["per_class"].items()}}
    probe_rows = ["| images | n | patients | probe accuracy | always the commonest source | difference |",
                  "|---|---|---|---|---|---|", *(f"| {name} | {_probe_cells(v)} |" for name, v in probes.items())]
    if all("skipped" in v for v in probes.values()):
        probe_rows = []  # the sentence says why
    hidden_rows = ["| images | accuracy | difference from as they are |", "|---|---|---|",
                   f"| as they are | {pct(h['plain'])} | |",
                   f"| lungs hidden | {pct(h['hidden'])} | {points(h['hidden_minus_plain'])} |",
                   f"| only the lungs kept | {pct(h['kept'])} | {points(h['kept_minus_plain'])} |"]
    source_rows = ["| source | n | patients | accuracy | lungs hidden | only the lungs | CAM mass in lungs | peak in lungs |",
                   "|---|---|---|---|---|---|---|---|"]
    source_rows += [f"| {name} | {v['n']} | {v['n_groups']} | {pct(v['accuracy']['plain'])} | {pct(v['accuracy']['hidden'])} | "
                    f"{pct(v['accuracy']['kept'])} | {pct(v['cam']['share'])} | {pct(v['cam']['peak'])} |"
                    for name, v in r["per_source"].items()]
    notes = []
    if r["empty_masks"]:
        notes.append(f"The segmenter found no lung in {r['empty_masks']} images; their maps count as outside the lungs.")
    if r["maps_without_mass"]:
        notes.append(f"{r['maps_without_mass']} maps had no mass at all and are left out of check 1.")
    parts = [
        "# Is the classifier looking at the lungs?\n",
        f"Classifier `{r['checkpoint']}` (trained on {r['input']}) on the **{r['split']}** split of `{r['data']}`: "
        f"{r['n']} images of {r['n_groups']} patients. Lung masks from the segmenter `{r['lungs']['checkpoint']}` (sha256 "
        f"`{r['lungs']['sha256'][:12]}`), drawn on the images the classifier sees. Maps: {r['method']} of the "
        f"predicted class. Values in percent with {100 * r['ci_level']:.0f} % intervals from {r['bootstrap_rounds']} "
        "bootstrap resamples of the patients (all images of a patient drawn together).",
        *([" ".join(notes)] if notes else []),
        f"\n## 1. Is the CAM inside the lungs?\n\n{s['cam']}\n", "\n".join(cam_rows),
        "\n" + "\n\n".join(f"![{name}]({name}.png)" for name in r["figures"]),
        f"\n## 2. Do the features know the source?\n\n{s['source_probe']}\n", "\n".join(probe_rows),
        f"\n## 3. What is left with the lungs hidden?\n\n{s['lungs_hidden']}\n", "\n".join(hidden_rows),
        f"\nChance: {100 * h['chance']:.1f} %; always naming the commonest class ({h['majority_class']}): "
        f"{100 * h['majority_rate']:.1f} %.",
        f"\n## 4. Where it errs: by source\n\n{s['per_source']}\n", "\n".join(source_rows),
        "\n" + GUIDE]
    return "\n".join(parts)
