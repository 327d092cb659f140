"""The decision of a cross-validated ablation, by rules fixed before it runs (also in the README and printed with
every result). The primary endpoint is the covid-vs-rest AUC within the covid source (:mod:`ablation.endpoints`);
the rules are checked in this order and the first that holds decides:

1. positive: gan − classic is at least +0.03 with its 95 % interval above 0 and the same sign in every fold,
   gan − placebo has its interval above 0, and the share of films from covid-free sources called covid rises by
   no more than 2 points (gan − classic);
2. negative: the interval of gan − classic lies below 0, or those covid calls rise by more than 2 points;
3. null: the interval of gan − classic lies within ±0.05;
4. inconclusive: none of these.

Each GAN arm (``gan``, ``gan-lungs``) is judged by the same rules.
"""
from __future__ import annotations

MIN_GAIN = 0.03        # least gain of the primary endpoint for a positive outcome
NULL_MARGIN = 0.05     # an interval within ±this is a null outcome
MAX_CALL_RISE = 0.02   # most rise (share of films) of covid calls on covid-free sources

RULES = (
    ("positive", f"{{arm}} − classic on the primary endpoint is at least +{MIN_GAIN:.2f} with its 95 % interval above 0 "
                 f"and the same sign in every fold, {{arm}} − placebo has its interval above 0, and the share of films "
                 f"from covid-free sources called covid rises by no more than {100 * MAX_CALL_RISE:.0f} points"),
    ("negative", f"the interval of {{arm}} − classic lies below 0, or those covid calls rise by more than "
                 f"{100 * MAX_CALL_RISE:.0f} points"),
    ("null", f"the interval of {{arm}} − classic lies within ±{NULL_MARGIN:.2f}"),
    ("inconclusive", "none of these"),
)


def rules_text(arm: str = "gan") -> str:
    """The rules as numbered lines, for the report."""
    return "\n".join(f"{i}. {name}: {text.format(arm=arm)};" if i < len(RULES) else f"{i}. {name}: {text.format(arm=arm)}."
                     for i, (name, text) in enumerate(RULES, start=1))


def _ci(ci) -> str:
    return f"95 % CI {ci[0]:+.3f} to {ci[1]:+.3f}"


def decide(differences: dict, arm: str = "gan", source: str | None = None, free: tuple[str, ...] | list[str] = ()) -> dict:
    """The outcome for GAN arm ``arm`` from :func:`ablation.endpoints.compare_arms`'s ``differences``:
    ``{"arm", "outcome", "rule", "sentence"}``, the sentence saying which rule fired and on what figures."""
    primary = f"the covid-vs-rest AUC within {source}" if source else "the covid-vs-rest AUC within the covid source"

    def result(outcome: str, sentence: str) -> dict:
        rule = [name for name, _ in RULES].index(outcome) + 1
        return {"arm": arm, "outcome": outcome, "rule": rule,
                "sentence": f"{outcome.capitalize()} (rule {rule} of {len(RULES)}, {arm}): {sentence}."}

    d = differences.get(f"{arm} − classic")
    if d is None:
        return result("inconclusive", f"no decision, because the rules compare {arm} with the classic arm, which did "
                                      "not run (add classic to --arms)")
    auc = d["auc_in_source"]
    if auc["value"] is None or auc["ci"] is None:
        why = ("it is undefined (that source needs covid and other films)" if auc["value"] is None
               else "it has no interval (eval.bootstrap is 0)")
        return result("inconclusive", f"no decision on {primary}, because {why}")
    gain, (lo, hi) = auc["value"], auc["ci"]
    figures = f"{arm} − classic changed {primary} by {gain:+.3f} ({_ci(auc['ci'])}; by fold {' '.join(auc['signs'])})"
    rise = d["calls_free_sources"]["value"]
    calls = (f"covid calls on covid-free sources ({', '.join(free)}) moved by {100 * rise:+.1f} points" if rise is not None
             else "there is no covid-free source to check covid calls on")
    rise = rise or 0.0
    placebo = differences.get(f"{arm} − placebo")
    placebo_ci = placebo and placebo["auc_in_source"]["ci"]

    failed = (f"the gain is under +{MIN_GAIN:.2f}" if gain < MIN_GAIN else
              "its interval reaches 0" if lo <= 0 else
              "it is not positive in every fold" if any(s != "+" for s in auc["signs"]) else
              "there is no placebo arm to beat" if placebo is None else
              f"{arm} − placebo has no interval" if placebo_ci is None else
              f"{arm} − placebo ({placebo['auc_in_source']['value']:+.3f}, {_ci(placebo_ci)}) does not lie above 0"
              if placebo_ci[0] <= 0 else
              f"{calls}, more than +{100 * MAX_CALL_RISE:.0f}" if rise > MAX_CALL_RISE else None)
    if failed is None:
        return result("positive", f"{figures}, beat the placebo ({arm} − placebo "
                                  f"{placebo['auc_in_source']['value']:+.3f}, {_ci(placebo_ci)}), and {calls} "
                                  f"(at most +{100 * MAX_CALL_RISE:.0f} allowed)")
    if hi < 0:
        return result("negative", f"{figures}, an interval below 0")
    if rise > MAX_CALL_RISE:
        return result("negative", f"{figures}, but {calls}, more than +{100 * MAX_CALL_RISE:.0f}")
    if lo >= -NULL_MARGIN and hi <= NULL_MARGIN:
        return result("null", f"{figures}, an interval within ±{NULL_MARGIN:.2f}; not positive because {failed}")
    return result("inconclusive", f"{figures}: not positive because {failed}, not below 0 and not within "
                                  f"±{NULL_MARGIN:.2f}")
