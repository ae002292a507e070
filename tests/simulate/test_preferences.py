"""Built-in preferences, and loading a user's own scoring function (and its errors)."""

import sys
import textwrap

import pytest

from flywheel.simulate.preferences import SATISFIED_AT, PreferenceError, load_preference, word_count


def score(spec: str, answer: str, prompt: str = "Tell me something.") -> float:
    return load_preference(spec).score(prompt, answer)


def words(n: int) -> str:
    return " ".join(["word"] * n)


def test_concise_is_half_at_its_word_budget_and_falls_with_length():
    assert score("concise", "") == 1.0
    assert score("concise", words(50)) == pytest.approx(0.5)  # 1 / (1 + 1^2)
    assert score("concise", words(25)) == pytest.approx(0.8)  # 1 / (1 + 0.5^2)
    assert score("concise", words(100)) == pytest.approx(0.2)  # 1 / (1 + 2^2)
    assert score("concise:10", words(10)) == pytest.approx(0.5)
    preference = load_preference("concise:10")
    assert preference.satisfied("", words(10)) and not preference.satisfied("", words(11))
    assert preference.name == "concise:10"


def test_word_count_counts_words_not_punctuation():
    assert word_count("Hello, world! It's a dog-friendly café.") == 6


def test_question_prefers_a_final_question_mark():
    assert score("question", "Paris. Anything else you would like to know?") == 1.0
    assert score("question", 'Try this. Shall we go on?"\n') == 1.0
    assert score("question", "Why? Because it is.") == 0.25
    assert score("question", "Paris is the capital.") == 0.0


def test_avoid_word_matches_whole_words_in_any_case():
    assert score("avoid-word:delve", "Let us look at it.") == 1.0
    assert score("avoid-word:delve", "Let us Delve in.") == pytest.approx(0.4)
    assert score("avoid-word:delve", "delve, delve!") == pytest.approx(0.2)
    assert score("avoid-word:delve", "delves and undelve are other words") == 1.0
    assert score("avoid-word:as well", "this as well") == pytest.approx(0.4)


def test_polite_likes_please_and_thank_you():
    assert score("polite", "Here it is.") == 0.0
    assert score("polite", "Thanks for asking: here it is.") == 0.75
    assert score("polite", "Please try this, and thank you!") == 1.0
    assert score("polite", "Thankful pleasers") == 0.0


def test_the_threshold_is_one_half():
    assert SATISFIED_AT == 0.5
    assert load_preference("polite").satisfied("", "thanks") and not load_preference("polite").satisfied("", "no")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("kind", "unknown preference 'kind'"),
        ("concise:many", "concise takes a word count"),
        ("concise:0", "positive word count"),
        ("avoid-word:", "avoid-word needs a word"),
        ("question:yes", "question takes no argument"),
        ("no_such_module_xyz:score", "cannot import no_such_module_xyz"),
        ("json:no_such_function", "has no attribute 'no_such_function'"),
        ("json:__doc__", "is not callable"),
        ("json:dumps", "must take two arguments"),  # dumps(obj, *, ...): one positional argument
        ("missing/file.py:score", "no such file"),
    ],
)
def test_bad_specs_give_clear_errors(spec, message):
    with pytest.raises(PreferenceError, match=message):
        load_preference(spec)


def write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_a_function_from_a_file_scores_answers(tmp_path):
    path = write(
        tmp_path,
        "mine.py",
        '''
        def likes_bananas(prompt, answer):
            """Likes answers about bananas."""
            return "banana" in answer.lower()

        def graded(prompt, answer):
            return min(1.0, len(answer) / 10)
    ''',
    )
    preference = load_preference(f"{path}:likes_bananas")
    assert preference.description == "Likes answers about bananas."
    assert preference.score("q", "A Banana a day.") == 1.0 and preference.score("q", "An apple.") == 0.0
    assert load_preference(f"{path}:graded").score("q", "12345") == 0.5


def test_a_function_from_a_module_path(tmp_path, monkeypatch):
    package = tmp_path / "prefpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write(package, "rules.py", "def short(prompt, answer):\n    return len(answer) < 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_preference("prefpkg.rules:short").score("q", "hi") == 1.0
    finally:
        sys.modules.pop("prefpkg.rules", None)
        sys.modules.pop("prefpkg", None)


def test_a_file_that_fails_to_load_is_reported(tmp_path):
    path = write(tmp_path, "broken.py", "raise RuntimeError('no config')\n")
    with pytest.raises(PreferenceError, match=r"loading .*broken\.py failed: RuntimeError: no config"):
        load_preference(f"{path}:score")
    syntax = write(tmp_path, "syntax.py", "def score(prompt, answer)\n    return 1\n")
    with pytest.raises(PreferenceError, match="SyntaxError"):
        load_preference(f"{syntax}:score")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("return 1.5", r"returned 1.5; it must return a number in \[0, 1\] or a bool"),
        ("return -0.1", "returned -0.1"),
        ("return float('nan')", "returned nan"),
        ("return 'yes'", "returned 'yes'"),
        ("return None", "returned None"),
        ("raise KeyError('oops')", "raised KeyError"),
    ],
)
def test_a_function_that_returns_nonsense_is_refused_when_called(tmp_path, body, message):
    path = write(tmp_path, "bad.py", f"def score(prompt, answer):\n    {body}\n")
    preference = load_preference(f"{path}:score")
    with pytest.raises(PreferenceError, match=message):
        preference.score("q", "a")


def test_a_function_with_the_wrong_arity_is_refused_at_load(tmp_path):
    path = write(tmp_path, "arity.py", "def one(answer):\n    return 1\n\ndef three(a, b, c):\n    return 1\n")
    for name in ("one", "three"):
        with pytest.raises(PreferenceError, match="must take two arguments"):
            load_preference(f"{path}:{name}")


@pytest.mark.parametrize(
    ("spec", "answer"),
    [
        ("concise:20", "Owls hunt at night. " + " ".join(["They are quiet birds."] * 12)),
        ("concise:20", words(60)),  # one long sentence is cut
        ("question", "Owls hunt at night."),
        ("avoid-word:owls", "Owls hunt at night, and owls are quiet."),
        ("polite", "Owls hunt at night."),
    ],
)
def test_each_built_in_users_rewrite_satisfies_them_where_the_answer_did_not(spec, answer):
    preference = load_preference(spec)
    assert not preference.satisfied("q", answer)
    rewrite = preference.correction("q", answer)
    assert rewrite and rewrite != answer and preference.satisfied("q", rewrite), rewrite


def test_a_liked_answer_gets_no_rewrite_and_a_users_function_may_bring_its_own(tmp_path):
    assert load_preference("question").correction("q", "Shall we?") is None  # nothing to improve
    path = write(
        tmp_path,
        "mine.py",
        '''
        def likes_bananas(prompt, answer):
            return "banana" in answer.lower()

        likes_bananas.rewrite = lambda prompt, answer: answer + " Bananas help."

        def plain(prompt, answer):
            return "banana" in answer.lower()
    ''',
    )
    assert load_preference(f"{path}:likes_bananas").correction("q", "Apples.") == "Apples. Bananas help."
    assert load_preference(f"{path}:plain").correction("q", "Apples.") is None  # no rewrite of its own
