import pytest

from flywheel.tokens import FeedbackToken, InvalidFeedbackToken


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
