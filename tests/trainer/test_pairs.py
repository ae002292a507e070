"""Preference pairs from feedback: pure functions over store rows."""

from trainer.pairs import TIE, HeldOut, Pair, build_pairs, continuation_pairs, is_heldout, ranking_pairs, thumbs_pairs
from trainer.records import ExternalPairRow, RankedCompletion, RatedResponse

PROMPT = (("user", "hi"),)


def rated(key: str, index: int, text: str, net: int, seq: int = 1) -> RatedResponse:
    return RatedResponse(key, PROMPT, f"c-{key}", index, text, net, seq)


def test_a_ranking_of_k_gives_its_k_choose_2_ordered_pairs():
    assert ranking_pairs([2, 0, 1], 0) == [(2, 0), (2, 1), (0, 1)]
    assert len(ranking_pairs([3, 1, 0, 2], 0)) == 6


def test_a_tie_gives_no_pair():
    assert ranking_pairs([0, 1], TIE) == []


def test_thumbs_up_beats_thumbs_down_on_the_same_prompt():
    pairs, need = thumbs_pairs([rated("p", 0, "good", 1), rated("p", 1, "bad", -1), rated("q", 0, "meh", 0)], {})
    assert [(p.chosen, p.rejected, p.source) for p in pairs] == [("good", "bad", "thumbs")]
    assert need == {}  # a net rating of zero states nothing


def test_lone_thumbs_are_paired_with_the_policys_own_sample():
    pairs, need = thumbs_pairs(
        [rated("p", 0, "good", 2), rated("q", 0, "awful", -1)], {"p": ["sample p"], "q": ["sample q"]}
    )
    got = {(p.chosen, p.rejected, p.source) for p in pairs}
    assert got == {("good", "sample p", "thumbs_vs_sample"), ("sample q", "awful", "thumbs_vs_sample")}
    assert need == {}


def test_lone_thumbs_without_a_sample_ask_for_one():
    dislikes = [rated("q", 0, "bad", -1), rated("r", 0, "worse", -1), rated("s", 0, "worst", -1)]
    pairs, need = thumbs_pairs([rated("p", 0, "good", 1), *dislikes], {"p": ["good"]})  # the rated text is no anchor
    assert pairs == []
    assert need == {"p": PROMPT}


def test_the_majoritys_lone_thumbs_are_paired_with_a_sample_only_while_the_split_is_not_lopsided():
    # Most answers are disliked: a sample is most likely disliked too, so "sample beats a disliked
    # answer" is about a coin toss, and "a liked answer beats the sample" says much.
    mostly_down = [rated("p", 0, "liked", 1), *(rated(k, 0, f"disliked {k}", -1) for k in "qrs")]
    anchors = {key: [f"sample {key}"] for key in "pqrs"}
    pairs, need = thumbs_pairs(mostly_down, anchors)
    assert [(p.chosen, p.rejected) for p in pairs] == [("liked", "sample p")]
    assert need == {}
    _, need = thumbs_pairs(mostly_down, {})
    assert need == {"p": PROMPT}  # no sample is drawn for a thumb that would not be paired with it
    # and the other way round once most answers are liked
    mostly_up = [*(rated(k, 0, f"liked {k}", 1) for k in "pqr"), rated("s", 0, "disliked", -1)]
    pairs, _ = thumbs_pairs(mostly_up, anchors)
    assert [(p.chosen, p.rejected) for p in pairs] == [("sample s", "disliked")]
    # a third or more on the minority side: both verdicts' lone thumbs are paired
    pairs, _ = thumbs_pairs([*mostly_down[:3], rated("t", 0, "liked t", 1)], {**anchors, "t": ["sample t"]})
    assert len(pairs) == 4
    # up against down on one prompt is a pair whatever the split
    pairs, _ = thumbs_pairs([*mostly_down, rated("q", 1, "liked on q", 1)], anchors)
    assert ("liked on q", "disliked q", "thumbs") in {(p.chosen, p.rejected, p.source) for p in pairs}


def test_build_pairs_splits_by_prompt_and_keeps_every_source():
    keys = [f"k{i}" for i in range(200)]
    ranked = [RankedCompletion(k, PROMPT, ("a", "b", "c"), (1, 0, 2), 0, i) for i, k in enumerate(keys)]
    external = [ExternalPairRow("ext", PROMPT, "yes", "no", 999)]
    result = build_pairs([], ranked, external, {}, heldout=10)
    assert len(result) == 200 * 3 + 1
    held = {p.prompt_key for p in result.heldout}
    assert held and held.isdisjoint({p.prompt_key for p in result.train})
    assert 5 <= len(held) <= 40  # about 10 % of 200 prompts
    assert all(is_heldout(k, 10) for k in held)
    # growing the data never moves a prompt across the split
    bigger = build_pairs([], [*ranked, RankedCompletion("new", PROMPT, ("x", "y"), (0, 1), 0, 5000)], [], {}, 10)
    assert held <= {p.prompt_key for p in bigger.heldout}


def test_a_narrow_prompt_pool_still_holds_out_a_minimum_of_prompts():
    keys = [f"prompt-{i}" for i in range(64)]
    by_percent = {k for k in keys if is_heldout(k, 10)}
    slice_ = HeldOut.of(keys, 10, minimum=12)
    held = {k for k in keys if k in slice_}
    assert len(held) == max(12, len(by_percent)) and by_percent <= held
    assert {k for k in keys if k in HeldOut.of(keys[:8], 10, minimum=12)} >= {k for k in keys[:8] if is_heldout(k, 10)}
    assert len(HeldOut.of(keys[:8], 10, minimum=12).extra) == 2  # at most a quarter of the prompts
    # a new prompt takes a place in the slice or trains; the held-out ones that stay are the same
    grown = HeldOut.of([*keys, "prompt-new"], 10, minimum=12)
    assert len(held - {k for k in keys if k in grown}) <= 1
    ranked = [RankedCompletion(k, PROMPT, ("a", "b"), (0, 1), 0, i) for i, k in enumerate(keys)]
    pairs = build_pairs([], ranked, [], {}, slice_)
    assert {p.prompt_key for p in pairs.heldout} == held


def test_a_continued_reward_model_gets_every_new_pair_and_as_many_replayed_old_ones():
    train = [Pair(f"p{i}", (("user", f"q{i}"),), "a", "b", "comparison", i) for i in range(20)]
    chosen = continuation_pairs(train, since_seq=14, replay_ratio=1.0, limit=100, seed=0)
    assert [p.seq for p in chosen if p.seq > 14] == [15, 16, 17, 18, 19]
    replayed = [p.seq for p in chosen if p.seq <= 14]
    assert len(replayed) == 5 and len(set(replayed)) == 5
    assert [p.seq for p in chosen] == sorted(p.seq for p in chosen)
    assert [p.seq for p in continuation_pairs(train, 14, 0.5, limit=2, seed=0) if p.seq > 14] == [18, 19]
    assert len(continuation_pairs(train, 14, 0.5, limit=2, seed=0)) == 3
    assert continuation_pairs(train, since_seq=19, replay_ratio=1.0, limit=100, seed=0) == []
