"""Certification against the winner's curse: a plan is accepted on a prediction bound of its increase
on the search windows, not on their mean (issue 24); the plan says which rule accepted it.

* the bound is the one-sided t prediction bound, by hand;
* the certifier refuses a measurement whose mean fits the tolerance but whose bound does not;
* through ``make_plan`` (a fake measurer on the synthetic run): a first plan that fits on the mean
  only is backed off, and the plan records the bound it was accepted on;
* the plan document round-trips ``certification``; a plan from before it still loads and the CLI
  says it was accepted on the mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from scipy.stats import t as student_t
from ssm_profile.documents import Certification, Verification, load_plan, write_plan
from ssm_profile.plan import PlanRequest, make_plan
from ssm_profile.plan.certify import LEVEL, RULE, Certifier, prediction_bound
from test_plan import synthetic  # noqa: F401 - the synthetic run fixture

DENSE = [4.0, 4.2, 3.9, 4.1, 4.0, 4.3, 3.8, 4.1]


def test_prediction_bound_by_hand():
    diffs = [0.02, 0.08, 0.05, 0.11, 0.01, 0.06, 0.09, 0.03]
    pruned = [d + x for d, x in zip(DENSE, diffs)]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1))
    want = math.expm1(mean + student_t.ppf(0.95, n - 1) * sd * math.sqrt(1 / n + 1 / 32))
    assert prediction_bound(DENSE, pruned, unseen=32, level=0.95) == pytest.approx(want, rel=1e-12)
    # more unseen windows, a narrower bound; never below the mean
    assert math.expm1(mean) < prediction_bound(DENSE, pruned, 1000) < prediction_bound(DENSE, pruned, 4)


def test_mean_within_tolerance_but_bound_above_is_refused():
    certifier = Certifier(dense=DENSE, unseen=32, max_ppl_increase=0.10)
    steady = [d + 0.07 for d in DENSE]  # +7.3% on every window
    erratic = [d + (0.0 if i % 2 else 0.14) for i, d in enumerate(DENSE)]  # the same mean, windows disagree
    for pruned in (steady, erratic):
        assert math.expm1(sum(p - d for d, p in zip(DENSE, pruned)) / len(DENSE)) == pytest.approx(math.expm1(0.07))
    m = {"delta_loss": 0.07, "rel_ppl_increase": math.expm1(0.07)}
    assert certifier.accepts({**m, "window_losses": steady})
    assert not certifier.accepts({**m, "window_losses": erratic}) and certifier.bound({**m, "window_losses": erratic}) > 0.10
    doc = certifier.document({**m, "window_losses": erratic})
    assert (doc.rule, doc.level, doc.windows, doc.unseen_windows, doc.certified) == (RULE, LEVEL, 8, 32, False)
    assert doc.margin == pytest.approx(doc.bound - doc.increase) and doc.margin > 0.03
    assert doc.sentence().startswith("NOT certified on 8 search windows") and "above the promised +10.0%" in doc.sentence()
    # the empty plan changes nothing: certified at +0%
    assert certifier.accepts({"delta_loss": 0.0, "rel_ppl_increase": 0.0})


class FakeMeasurer:
    """Measures a combination as ``0.01`` loss per action on average; windows disagree in proportion to
    the number of actions beyond one, so two or more actions fit on the mean (if few) but not on the bound."""

    dense_loss = sum(DENSE) / len(DENSE)

    def __init__(self):
        self.expected_criteria: set[str] = set()
        self.measured: list[tuple[int, float, bool]] = []  # (actions, mean increase, accepted)
        self._certifier = None

    def certifier(self, max_ppl_increase: float) -> Certifier:
        self._certifier = Certifier(dense=DENSE, unseen=32, max_ppl_increase=max_ppl_increase)
        return self._certifier

    def measure(self, actions) -> dict:
        k = len(actions)
        spread = 0.15 * max(0, k - 1)
        pruned = [d + 0.01 * k + (spread if i % 2 else -spread) for i, d in enumerate(DENSE)]
        delta = 0.01 * k
        m = {"loss": self.dense_loss + delta, "delta_loss": delta, "rel_ppl_increase": math.expm1(delta),
             "params_removed": 0, "window_losses": pruned}
        self.measured.append((k, m["rel_ppl_increase"], self._certifier.accepts(m)))
        return m

    def measure_many(self, combinations) -> list[dict]:
        return [self.measure(actions) for actions in combinations]

    def exact_overlap(self, a, b) -> int:
        return 0

    def verify(self, actions, max_ppl_increase: float) -> Verification:
        return Verification(dense_loss=4.0, loss=4.0, delta_loss=0.0, rel_ppl_increase=0.0, interval=[0.0, 0.0],
                            windows=32, max_ppl_increase=max_ppl_increase, kept=True)


def test_a_plan_that_fits_on_the_mean_only_is_backed_off(synthetic):  # noqa: F811
    fake = FakeMeasurer()
    plan = make_plan(synthetic, PlanRequest(metric="params", max_ppl_increase=0.10), measurer=fake)
    first_actions, first_mean, first_accepted = fake.measured[0]
    assert first_actions >= 2 and first_mean <= 0.10 and not first_accepted  # the old rule took this one
    c = plan.certification
    assert c is not None and c.certified and c.bound <= 0.10 and len(plan.actions) <= 1
    assert plan.measured.backoff_steps >= 1 and c.rule == RULE and c.increase == plan.measured.rel_ppl_increase
    assert plan.to_dict()["certification"]["bound"] == c.bound


def test_certification_round_trips_and_old_plans_load(synthetic, tmp_path, capsys):  # noqa: F811
    from ssm_profile.cli.plan_cmd import print_plan

    plan = make_plan(synthetic, PlanRequest(metric="params", ratio=0.2, measure=False))
    assert plan.certification is None  # not measured: nothing certified
    doc = Certifier(dense=DENSE, unseen=32, max_ppl_increase=0.10).document(
        {"delta_loss": 0.05, "rel_ppl_increase": math.expm1(0.05), "window_losses": [d + 0.05 for d in DENSE]})
    certified = replace(plan, certification=doc)
    path = write_plan(certified, tmp_path / "plan.json")
    loaded = load_plan(path)
    assert loaded == certified and isinstance(loaded.certification, Certification)
    assert loaded.to_dict() == json.loads(path.read_text())
    # a plan written before the rule: no certification key; it loads, and says how it was accepted
    old = certified.to_dict()
    del old["certification"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    before = load_plan(tmp_path / "old.json")
    assert before.certification is None and "certification" not in before.to_dict()
    measured = replace(before, measured=_measured())
    print_plan(measured)
    printed = " ".join(capsys.readouterr().out.split())
    assert "certified on the search windows' mean increase" in printed
    print_plan(replace(measured, certification=doc))
    printed = " ".join(capsys.readouterr().out.split())
    assert "prediction bound for 32 unseen windows" in printed and "why a bound, not the mean" in printed
    bad = certified.to_dict()
    bad["certification"]["windows"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(Exception, match=r"\$\.certification\.windows"):
        load_plan(tmp_path / "bad.json")


def _measured():
    from ssm_profile.documents import Measured

    return Measured(loss=4.05, delta_loss=0.05, rel_ppl_increase=math.expm1(0.05), within_tolerance=True,
                    backoff_steps=0)
