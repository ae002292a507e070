import time

import pytest

from flywheel.tokens import ExpiredFeedbackToken, FeedbackToken, InvalidFeedbackToken


def test_issued_token_verifies_with_its_claims():
    signer = FeedbackToken("secret")
    token = signer.issue("chatcmpl-1", 1, 2, "alice", "v3", issued_at=123)
    claims = signer.verify(token)
    assert (claims.completion_id, claims.choice_index, claims.choice_count) == ("chatcmpl-1", 1, 2)
    assert (claims.user_id, claims.policy_version, claims.issued_at) == ("alice", "v3", 123)


def test_token_from_another_secret_is_refused():
    token = FeedbackToken("secret").issue("c", 0, 1, "alice", "base")
    with pytest.raises(InvalidFeedbackToken, match="signature"):
        FeedbackToken("other-secret").verify(token)


def test_altered_claims_are_refused():
    signer = FeedbackToken("secret")
    other = signer.issue("c", 0, 1, "mallory", "base")
    token = signer.issue("c", 0, 1, "alice", "base")
    # Graft mallory's payload onto alice's signature.
    forged = ".".join([token.split(".")[0], other.split(".")[1], token.split(".")[2]])
    with pytest.raises(InvalidFeedbackToken):
        signer.verify(forged)


@pytest.mark.parametrize("garbage", ["", "fw1", "fw1.a.b.c", "xx.a.b", "fw1.!!.sig", None])
def test_malformed_tokens_are_refused(garbage):
    with pytest.raises(InvalidFeedbackToken):
        FeedbackToken("secret").verify(garbage)


@pytest.mark.parametrize("garbage", ["fw1.é.sig", "fw1.payload.sïg", "fw1.\udcff.sig", "fw1.a.b\x00é"])
def test_non_ascii_tokens_are_refused_as_malformed_not_an_error(garbage):
    with pytest.raises(InvalidFeedbackToken, match="malformed"):
        FeedbackToken("secret").verify(garbage)


def test_a_token_older_than_the_time_to_live_is_refused_as_expired():
    signer = FeedbackToken("secret", ttl_s=3600)
    assert signer.verify(signer.issue("c", 0, 1, "alice", "base", issued_at=int(time.time()) - 3000)).user_id == "alice"
    old = signer.issue("c", 0, 1, "alice", "base", issued_at=int(time.time()) - 3700)
    with pytest.raises(ExpiredFeedbackToken, match="expired"):
        signer.verify(old)
    assert FeedbackToken("secret", ttl_s=0).verify(old).user_id == "alice"  # 0: tokens never expire
