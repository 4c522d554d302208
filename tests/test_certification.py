"""Certified exit thresholds: the fixed candidates and their order, exact decisions, the choice and its certificate,
and the refusal of a calibration split too small to certify the budget."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from analysis_helpers import synthetic_cache, synthetic_profile, tiny_model
from scipy.stats import binom
from transformers import HfArgumentParser

from models.criteria import get_criterion
from models.exit_settings import ExitSettings
from utils.analysis.calibration import evaluation_report, write_exit_settings
from utils.analysis.certification import (
    CERTIFICATIONS_FILE,
    candidate_sequences,
    candidate_table,
    certified_indices,
    certify,
    certify_budgets,
    fastest,
    record_certification,
    selection_safe_bound,
)
from utils.analysis.compare_methods import budget_note, budget_table
from utils.analysis.report import check_analysis_request
from utils.analysis.risk_control import critical_errors, upper_confidence_bound
from utils.analysis.sweep import exit_decisions
from utils.arguments import AnalysisArguments
from utils.arguments.analysis import RISK_NAMES

CRITERIA = ["entropy", "confidence", "patience", "patient_and_confident"]
NUM_EXITS = 6


@pytest.fixture(scope="module")
def cache():
    return synthetic_cache(num_samples=600, num_exits=NUM_EXITS, seed=3)


def sequences_of(cache, criterion, path="shared"):
    return candidate_sequences(criterion, 10, cache.exit_layers, cache.num_blocks, path, patience_values=[1, 2])


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("path", ["shared", "depth"])
def test_each_sequence_runs_from_no_early_exit_to_the_most_aggressive(cache, criterion, path):
    profile = synthetic_profile(NUM_EXITS)
    for sequence in sequences_of(cache, criterion, path):
        exits = candidate_table(cache, profile, [sequence]).flops
        assert torch.equal(exits[0], torch.full_like(exits[0], profile.exit_costs()[-1]))  # no image leaves early
        order = torch.stack([exit_decisions(cache, settings)[1] for settings in sequence])
        assert (order[1:] <= order[:-1]).all()  # along a sequence, no image ever leaves later
        if path == "shared" and criterion != "patient_and_confident":
            assert order[-1].double().mean() < 1.0  # the last one lets nearly every image leave at the first exit
    # The candidates are fixed by the model's shape alone: other images give the very same candidates.
    assert sequences_of(cache, criterion, path) == sequences_of(synthetic_cache(50, NUM_EXITS, seed=9), criterion,
                                                                path)


def test_depth_path_is_stricter_at_shallower_exits(cache):
    for criterion in ("confidence", "entropy"):
        leaves_below = get_criterion(criterion).leaves_below
        for settings in sequences_of(cache, criterion, "depth")[0][1:]:
            values = list(settings.thresholds)
            assert values == sorted(values, reverse=not leaves_below)
            assert values[0] != values[-1]


@pytest.mark.parametrize("criterion", ["entropy", "confidence", "patient_and_confident"])
def test_candidate_table_gives_exactly_the_online_decisions(cache, criterion):
    """The table decides many thresholds at once; it must equal the per-setting decisions (`exit_decisions`, equal
    to the online early exit), also for thresholds that equal some image's score exactly."""
    profile = synthetic_profile(NUM_EXITS)
    scores = get_criterion(criterion).score(cache.exit_logits.reshape(-1, cache.exit_logits.shape[-1]))
    exact = [ExitSettings(criterion, (value,) * NUM_EXITS, 2) for value in scores[::37].tolist()]
    sequences = sequences_of(cache, criterion, "depth") + [exact]
    table = candidate_table(cache, profile, sequences)
    for index, settings in enumerate(table.settings):
        logits, exit_index = exit_decisions(cache, settings)
        assert torch.equal(table.flops[index], profile.flops_at_exits(exit_index))
        assert torch.equal(table.early_correct[index], logits.argmax(-1) == cache.labels)
        assert torch.equal(table.agrees[index], logits.argmax(-1) == cache.final_logits.argmax(-1))


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("risk", ["accuracy", "consistency"])
def test_certified_choice_is_the_fastest_certified_setting(cache, criterion, risk):
    profile = synthetic_profile(NUM_EXITS)
    calibration = certify(cache, profile, criterion, 5.0, 0.1, risk=risk, patience_values=[2])
    details = calibration.details
    assert details["certified"] and details["calibration_samples"] == 600 and details["risk"] == risk
    assert details["critical_errors"] == critical_errors(600, 0.05, 0.1)
    assert details["calibration_errors"] <= details["critical_errors"]
    assert details["certified_risk_bound"] == pytest.approx(100 * upper_confidence_bound(details["critical_errors"],
                                                                                         600, 0.1))
    assert details["certified_risk_bound"] <= 5.0
    table = candidate_table(cache, profile, candidate_sequences(criterion, 10, cache.exit_layers, cache.num_blocks,
                                                                patience_values=[2]))
    certified = certified_indices(table, 0.05, 0.1, risk)
    assert len(certified) == details["certified_candidates"] and table.settings[fastest(table, certified)] == \
        calibration.settings
    assert calibration.point.average_exit_layer < cache.num_blocks  # a budget of 5 points lets images leave early
    errors = table.losses(risk)[table.settings.index(calibration.settings)].sum()
    assert int(errors) == details["calibration_errors"]


def test_consistency_needs_no_labels(cache):
    profile = synthetic_profile(NUM_EXITS)
    relabelled = type(cache)(cache.exit_logits, cache.final_logits, torch.zeros_like(cache.labels),
                             cache.exit_layers, cache.num_blocks)
    with_labels = certify(cache, profile, "confidence", 2.0, 0.1, risk="consistency")
    without = certify(relabelled, profile, "confidence", 2.0, 0.1, risk="consistency")
    assert with_labels.settings == without.settings
    assert certify(relabelled, profile, "confidence", 2.0, 0.1).settings != without.settings


def test_the_certificate_reaches_the_report_and_the_config(cache):
    held_out, evaluation = cache.split(0.5, seed=1)
    profile = synthetic_profile(NUM_EXITS)
    calibration = certify(held_out, profile, "patience", 3.0, 0.1)
    report = evaluation_report(evaluation, profile, calibration.settings, calibration)
    assert report["target"] == "certified accuracy drop <= 3 points at risk level 0.1"
    assert report["max_accuracy_drop"] == 3.0 and report["risk_level"] == 0.1
    assert report["calibration_flops_speedup"] == calibration.point.flops_speedup
    drop_count = round(report["accuracy_drop"] * report["samples"] / 100)
    assert report["accuracy_drop_within_budget"] == (100 * drop_count <= 3 * report["samples"])
    model = tiny_model()  # six exits, as the synthetic cache
    write_exit_settings(model.config, calibration.settings)
    assert model.config.exit_settings() == calibration.settings


@pytest.mark.parametrize("criterion", ["patience", "confidence"])
def test_the_reported_risk_bound_is_itself_certified_whatever_was_chosen(cache, criterion):
    """The reported bound depends on no error count, and certifying it as the budget makes the very same choice;
    the bound at the chosen setting's own count would claim less (patience: 7 errors where 22 certify)."""
    profile = synthetic_profile(NUM_EXITS)
    details = certify(cache, profile, criterion, 5.0, 0.1).details
    bound = details["certified_risk_bound"]
    assert bound == certify(cache, profile, "entropy", 5.0, 0.1, risk="consistency").details["certified_risk_bound"]
    again = certify(cache, profile, criterion, bound, 0.1)
    assert again.settings == certify(cache, profile, criterion, 5.0, 0.1).settings
    assert again.details["critical_errors"] == details["critical_errors"]
    if criterion == "patience":
        assert details["calibration_errors"] < details["critical_errors"]
        assert 100 * upper_confidence_bound(details["calibration_errors"], 600, 0.1) < bound - 1.0


@pytest.mark.parametrize("bound", ["binomial", "hoeffding_bentkus"])
@pytest.mark.parametrize(("samples", "epsilon", "delta"), [(200, 0.05, 0.1), (1000, 0.01, 0.1), (306, 0.02, 0.05)])
def test_the_risk_bound_makes_the_same_decisions_as_the_budget(samples, epsilon, delta, bound):
    """At the reported bound the test passes exactly the counts it passes at the budget (no float rounding across
    the edge, which the closed-form bound alone crosses for these sizes)."""
    value = selection_safe_bound(samples, epsilon, delta, bound)
    assert value <= epsilon and value == pytest.approx(upper_confidence_bound(
        critical_errors(samples, epsilon, delta, bound), samples, delta, bound), rel=1e-9)
    assert critical_errors(samples, value, delta, bound) == critical_errors(samples, epsilon, delta, bound)


def test_a_consistency_certificate_reports_the_consistency_risk(cache):
    held_out, evaluation = cache.split(0.5, seed=1)
    profile = synthetic_profile(NUM_EXITS)
    for risk in ("consistency", "accuracy"):
        calibration = certify(held_out, profile, "confidence", 3.0, 0.1, risk=risk)
        report = evaluation_report(evaluation, profile, calibration.settings, calibration)
        logits, _ = exit_decisions(evaluation, calibration.settings)
        early, final = logits.argmax(-1), evaluation.final_logits.argmax(-1)
        wrong = (early != final) if risk == "consistency" else (early != evaluation.labels) & (final ==
                                                                                              evaluation.labels)
        assert report["evaluation_risk"] == pytest.approx(100 * wrong.double().mean().item())
        assert report["evaluation_risk_name"].startswith(f"{risk} risk")
        assert ("disagreement" in report["target"]) == (risk == "consistency")
    assert report["accuracy_drop"] == pytest.approx(100 * (final == evaluation.labels).double().mean().item() -
                                                    100 * (early == evaluation.labels).double().mean().item())


def test_a_second_certification_into_one_directory_warns(cache, tmp_path, caplog):
    profile = synthetic_profile(NUM_EXITS)
    first = certify(cache, profile, "confidence", 5.0, 0.1)
    with caplog.at_level("WARNING", logger="utils.analysis.certification"):
        record_certification(tmp_path, first)
        record_certification(tmp_path, first)  # the same certification again (a resumed run) is no new try
        assert not caplog.records
        record_certification(tmp_path, certify(cache, profile, "confidence", 3.0, 0.1))
    assert len(caplog.records) == 1 and "voids the guarantee" in caplog.text and "DELTA / k" in caplog.text
    assert "5 points" in caplog.text and "3 points" in caplog.text
    assert len(json.loads((tmp_path / CERTIFICATIONS_FILE).read_text())) == 2
    empirical = tmp_path / "empirical"
    record_certification(empirical, replace(first, details={}))
    assert not empirical.exists()


def test_a_split_too_small_to_certify_is_refused(cache):
    small = cache.select(torch.arange(229))
    with pytest.raises(ValueError, match=r"229 images, too few .* 1 points at risk level 0.1.*n >= 230"):
        certify(small, synthetic_profile(NUM_EXITS), "confidence", 1.0, 0.1)
    assert certify(cache.select(torch.arange(230)), synthetic_profile(NUM_EXITS), "confidence", 1.0, 0.1).met
    # Two patience counts halve the level of each: 299 images are needed.
    with pytest.raises(ValueError, match="n >= 299"):
        certify(cache.select(torch.arange(298)), synthetic_profile(NUM_EXITS), "patient_and_confident", 1.0, 0.1,
                patience_values=[1, 2])


def test_a_split_too_small_is_refused_before_training():
    args = AnalysisArguments(max_accuracy_drop=1.0, risk_level=0.1)
    with pytest.raises(ValueError, match="153 images, too few.*n >= 230.*--calibration_split"):
        check_analysis_request(args, num_exits=11, calibration_split=0.1, calibration_samples=153,
                               strategy="confidence")
    check_analysis_request(args, num_exits=11, calibration_split=0.2, calibration_samples=306, strategy="confidence")
    with pytest.raises(ValueError, match="--certified_patience lists patience counts of patient_and_confident"):
        check_analysis_request(AnalysisArguments(max_accuracy_drop=1.0, risk_level=0.1, certified_patience=[1, 2]),
                               num_exits=11, calibration_split=0.2, calibration_samples=306, strategy="confidence")
    scaled = AnalysisArguments(max_accuracy_drop=1.0, risk_level=0.1, temperature_split=0.3)
    with pytest.raises(ValueError, match="214 images, too few"):  # 92 of the 306 fit the temperatures
        check_analysis_request(scaled, num_exits=11, calibration_split=0.2, calibration_samples=306,
                               strategy="confidence")


def test_certification_options_are_checked():
    with pytest.raises(ValueError, match="give --max_accuracy_drop > 0 too"):
        AnalysisArguments(risk_level=0.1)
    with pytest.raises(ValueError, match="give --max_accuracy_drop > 0 too"):
        AnalysisArguments(risk_level=0.1, max_accuracy_drop=0.0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        AnalysisArguments(risk_level=1.0, max_accuracy_drop=1.0)
    with pytest.raises(ValueError, match="give --risk_level"):
        AnalysisArguments(max_accuracy_drop=1.0, risk="consistency")
    with pytest.raises(ValueError, match="--risk_bound='exact' must be one of binomial, hoeffding_bentkus"):
        AnalysisArguments(max_accuracy_drop=1.0, risk_level=0.1, risk_bound="exact")
    with pytest.raises(ValueError, match="--temperature_split scales"):
        AnalysisArguments(temperature_split=0.3)


def test_the_comparison_shows_the_risk_bound_and_names_the_risk():
    row = {"method": "SDN", "max_accuracy_drop": 1.0, "accuracy_drop": 0.37, "accuracy_drop_within_budget": True,
           "evaluation_risk": 1.11, "evaluation_risk_lower_bound": 0.3, "flops_speedup": 2.5, "risk_level": 0.1,
           "calibration_samples": 306, "calibration_flops_speedup": 2.4, "certified_risk_bound": 0.7497,
           "evaluation_risk_name": RISK_NAMES["consistency"]}
    plain = {**row, "evaluation_risk_name": RISK_NAMES["accuracy"], "flops_speedup": 3.7}
    table = budget_table([row], [plain])
    assert "n = 306): risk bound |" in table.splitlines()[0]
    assert "| SDN | 1 | 0.37 (within 1) | 1.11 (0.30) | 3.70 | 0.75 | 0.37 (within 1) |" in table
    note = budget_note([row], [plain])
    assert "the consistency risk (early answer differs from the final classifier's) that was certified" in note
    assert "(empirical rows: the accuracy risk" in note


def test_several_budgets_share_the_risk_level(cache):
    """Each of k budgets is certified at delta / k: the very choice and critical count of certifying it alone at that
    level; the first is the one the model keeps, every one is reported with its own setting."""
    held_out, evaluation = cache.split(0.5, seed=1)
    profile = synthetic_profile(NUM_EXITS)
    budgets = [3.0, 1.5, 6.0]
    calibration = certify_budgets(held_out, profile, "confidence", budgets, 0.1)
    assert [calibration.max_accuracy_drop] + [other.max_accuracy_drop for other in calibration.others] == budgets
    for certified, budget in zip((calibration, *calibration.others), budgets):
        alone = certify(held_out, profile, "confidence", budget, 0.1 / 3)
        assert certified.settings == alone.settings
        assert certified.details["critical_errors"] == alone.details["critical_errors"] == critical_errors(
            300, budget / 100, 0.1 / 3)
        assert certified.details["certified_risk_bound"] == alone.details["certified_risk_bound"]
        assert certified.details["budgets"] == 3 and certified.details["risk_level"] == 0.1
        assert certified.target == f"certified accuracy drop <= {budget:g} points at risk level 0.1 shared by 3 budgets"
    # The split costs: alone at delta, 3 points allows more errors than at delta / 3.
    assert critical_errors(300, 0.03, 0.1) > calibration.details["critical_errors"]
    report = evaluation_report(evaluation, profile, calibration.settings, calibration)
    assert report["max_accuracy_drop"] == 3.0 and [other["max_accuracy_drop"] for other in report["other_budgets"]] \
        == [1.5, 6.0]
    for other, certified in zip(report["other_budgets"], calibration.others):
        assert other == evaluation_report(evaluation, profile, certified.settings, certified)
        assert other["target"].endswith("shared by 3 budgets") and "evaluation_risk" in other
    assert report["other_budgets"][1]["flops_speedup"] > report["flops_speedup"]  # a larger budget, faster
    json.dumps(report)  # analysis_results.json can hold it


def test_several_budgets_are_one_try_in_the_record(cache, tmp_path, caplog):
    profile = synthetic_profile(NUM_EXITS)
    with caplog.at_level("WARNING", logger="utils.analysis.certification"):
        record_certification(tmp_path, certify_budgets(cache, profile, "confidence", [3.0, 1.5, 6.0], 0.1))
        assert not caplog.records
        record_certification(tmp_path, certify_budgets(cache, profile, "confidence", [3.0, 6.0], 0.1))
    made = json.loads((tmp_path / CERTIFICATIONS_FILE).read_text())
    assert [(entry["max_accuracy_drop"], entry["other_budgets"], entry["budgets"]) for entry in made] == [
        (3.0, [1.5, 6.0], 3), (3.0, [6.0], 2)]
    assert len(caplog.records) == 1 and "3 (with 1.5, 6) points" in caplog.text and "--extra_budgets" in caplog.text


def test_several_budgets_are_checked_before_training(cache):
    parser = HfArgumentParser(AnalysisArguments)
    (args,) = parser.parse_args_into_dataclasses(["--max_accuracy_drop", "1", "--risk_level", "0.1",
                                                  "--extra_budgets", "0.5", "2"])
    assert args.certified_budgets == [1.0, 0.5, 2.0]
    for extra, problem in (([1.0], "each different"), ([2.0, 2.0], "each different"), ([0.0], "budgets > 0"),
                           ([], "budgets > 0")):
        with pytest.raises(ValueError, match=rf"--extra_budgets=.*{problem}"):
            AnalysisArguments(max_accuracy_drop=1.0, risk_level=0.1, extra_budgets=extra)
    with pytest.raises(ValueError, match="--extra_budgets choose how --risk_level certifies: give --risk_level"):
        AnalysisArguments(max_accuracy_drop=1.0, extra_budgets=[2.0])
    with pytest.raises(ValueError, match="must be one or more different values"):
        certify_budgets(cache, synthetic_profile(NUM_EXITS), "confidence", [2.0, 2.0], 0.1)
    # One point alone at 0.1 needs 230 images; beside a second budget, at 0.05, it needs 299.
    shared = AnalysisArguments(max_accuracy_drop=2.0, risk_level=0.1, extra_budgets=[1.0])
    with pytest.raises(ValueError, match=r"298 images, too few .* 1 points .* n >= 299, delta shared by 2 budgets"
                                         r".*certify fewer --extra_budgets"):
        check_analysis_request(shared, num_exits=11, calibration_split=0.2, calibration_samples=298,
                               strategy="confidence")
    check_analysis_request(shared, num_exits=11, calibration_split=0.2, calibration_samples=299, strategy="confidence")
    with pytest.raises(ValueError, match="n >= 299, delta shared by 2 budgets"):
        certify_budgets(cache.select(torch.arange(298)), synthetic_profile(NUM_EXITS), "confidence", [2.0, 1.0], 0.1)


def test_the_docs_example_of_a_bound_chosen_for_passing():
    """The small example of docs/certified-thresholds.md: at n = 200, 5 points, delta 0.1, at most 5 errors certify
    (bound 4.59 points); the best of k candidates of true risk 5.5 points shows a pointwise bound below the budget
    with probability 0.034, 0.158, 0.498 and 0.968 for k = 1, 5, 20, 100."""
    critical = critical_errors(200, 0.05, 0.1)
    assert critical == 5 and 100 * upper_confidence_bound(critical, 200, 0.1) == pytest.approx(4.59, abs=0.005)
    assert 100 * upper_confidence_bound(critical, 200, 0.1) < 5.0 < 100 * upper_confidence_bound(critical + 1, 200, 0.1)
    one = float(binom.cdf(critical, 200, 0.055))
    chances = [1 - (1 - one) ** candidates for candidates in (1, 5, 20, 100)]
    assert chances == pytest.approx([0.034, 0.158, 0.498, 0.968], abs=5e-4)
