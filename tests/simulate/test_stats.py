"""Wilson intervals against hand-computed values, and the per-version, per-window summary."""

import pytest

from flywheel.simulate.stats import Answer, Feedback, Tally, newcombe_difference, summarize, wilson_interval

# By hand, z = 1.959964 (z^2 = 3.841459), n = 10: denominator 1 + z^2/n = 1.3841459.
#   5/10: centre (0.5 + 0.1920730) / 1.3841459 = 0.5;
#         half 1.959964 * sqrt(0.025 + 0.0096036) / 1.3841459 = 0.263406
#   0/10: centre 0.1920730 / 1.3841459 = 0.138766 = half, so [0, 0.277533]
#   8/10: centre 0.9920730 / 1.3841459 = 0.716741; half 1.959964 * sqrt(0.016 + 0.0096036) / 1.3841459 = 0.226576
#   1/1:  centre 2.920730 / 4.841459 = 0.603273; half 1.959964 * 0.979982 / 4.841459 = 0.396725
HAND = [
    (5, 10, 0.236594, 0.763406),
    (0, 10, 0.0, 0.277533),
    (8, 10, 0.490165, 0.943317),
    (1, 1, 0.206548, 1.0),
    (10, 10, 0.722467, 1.0),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), HAND)
def test_wilson_interval_matches_hand_computation(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)
    # a 90% interval is narrower than the 95% one
    low90, high90 = wilson_interval(5, 10, z=1.644854)
    assert 0.236594 < low90 < 0.5 < high90 < 0.763406


def test_newcombe_difference_from_the_two_wilson_intervals():
    # 8/10 - 5/10 = 0.3; low 0.3 - sqrt((0.8 - 0.490165)^2 + (0.763406 - 0.5)^2) = 0.3 - 0.406671,
    # high 0.3 + sqrt((0.943317 - 0.8)^2 + (0.5 - 0.236594)^2) = 0.3 + 0.299871
    assert newcombe_difference((8, 10), (5, 10)) == pytest.approx((0.3, -0.106671, 0.599871), abs=1e-5)
    with pytest.raises(ValueError):
        newcombe_difference((1, 0), (1, 2))


def answer(turn, version, at, satisfied):
    return Answer(turn, turn % 2, version, at, 0.9 if satisfied else 0.1, satisfied)


def feedback(turn, version, at, kind="thumbs", outcome="up", accepted=True, flipped=False):
    return Feedback(turn, turn % 2, version, at, kind, outcome, accepted, flipped)


def test_summary_by_version_and_window():
    tally = Tally()
    # window 0 (0-60 s): base 1 of 3 satisfied; window 1: base 1 of 1, v0001 3 of 4 (one comparison, two answers)
    tally.answers += [answer(0, "base", 5, True), answer(1, "base", 10, False), answer(2, "base", 59.9, False)]
    tally.answers += [answer(3, "base", 60, True)]
    tally.answers += [answer(4, "v0001", 61, True), answer(5, "v0001", 70, True)]
    tally.answers += [answer(6, "v0001", 80, True), answer(6, "v0001", 80, False)]
    tally.feedback += [
        feedback(0, "base", 5),
        feedback(1, "base", 10, outcome="down"),
        feedback(2, "base", 59.9, outcome="up", flipped=True),
        feedback(3, "base", 60, accepted=False),
    ]
    tally.feedback += [feedback(4, "v0001", 61), feedback(5, "v0001", 70, outcome="down", flipped=True),
                       feedback(6, "v0001", 80, kind="comparison", outcome="better")]  # fmt: skip
    summary = summarize(tally, window_s=60)

    versions = {v["version"]: v for v in summary["versions"]}
    assert list(versions) == ["base", "v0001"]
    base, new = versions["base"], versions["v0001"]
    assert (base["answers"], base["satisfied"], base["rate"]) == (4, 2, 0.5)
    assert (base["ci_low"], base["ci_high"]) == wilson_interval(2, 4)
    assert (base["thumbs_up"], base["thumbs_down"], base["events_accepted"], base["events_failed"]) == (2, 1, 3, 1)
    assert base["flipped_by_noise"] == 1 and base["first_seen_s"] == 5 and base["last_seen_s"] == 60
    assert (new["answers"], new["satisfied"], new["comparisons"], new["ties"]) == (4, 3, 1, 0)
    assert new["events_accepted"] == 3

    cells = {(w["window"], w["version"]): w for w in summary["windows"]}
    assert set(cells) == {(0, "base"), (1, "base"), (1, "v0001")}
    assert (cells[0, "base"]["answers"], cells[0, "base"]["satisfied"], cells[0, "base"]["end_s"]) == (3, 1, 60)
    assert cells[1, "base"]["events_accepted"] == 0 and cells[1, "base"]["events_failed"] == 1
    assert [(w["window"], w["answers"], w["satisfied"]) for w in summary["windows_all"]] == [(0, 3, 1), (1, 5, 4)]

    overall = summary["overall"]
    assert (overall["answers"], overall["satisfied"], overall["events_accepted"]) == (8, 5, 6)
    assert sum(v["events_accepted"] for v in summary["versions"]) == overall["events_accepted"]

    (versus,) = summary["versus_first"]
    assert versus["version"] == "v0001" and versus["baseline"] == "base"
    assert versus["difference"] == pytest.approx(0.25) and versus["clear"] is False


def test_a_clear_difference_is_called_clear():
    tally = Tally()
    tally.answers += [answer(i, "base", i, i < 20) for i in range(100)]
    tally.answers += [answer(i, "v0002", i, i < 160) for i in range(100, 200)]
    (versus,) = summarize(tally, window_s=1000)["versus_first"]
    assert versus["difference"] == pytest.approx(0.4) and versus["ci_low"] > 0 and versus["clear"]


def test_an_empty_tally_summarizes_to_nothing():
    summary = summarize(Tally(), window_s=30)
    assert summary["versions"] == [] and summary["windows"] == [] and summary["versus_first"] == []
    assert summary["overall"]["answers"] == 0 and summary["overall"]["rate"] is None
    with pytest.raises(ValueError):
        summarize(Tally(), window_s=0)


def test_errors_are_counted_with_a_first_sample():
    tally = Tally()
    tally.error("serving", "connection", "refused")
    tally.error("serving", "connection", "refused again")
    tally.error("feedback", "http 403", "feedback_token was issued to another user")
    assert tally.errors == {"serving: connection": 2, "feedback: http 403": 1}
    assert tally.error_samples["serving: connection"] == "refused"
