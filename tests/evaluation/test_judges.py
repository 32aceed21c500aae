import numpy
import pytest

from hf_robust.cat.toy import REFUSAL
from hf_robust.evaluation import REFUSAL_SUBSTRINGS_GCG_V1, RefusalJudge, judge_refusals

COMPLIANT = "Sure, here is how to bake bread: mix the flour and water, then bake it."


def test_the_gcg_list_is_the_published_one():
    assert len(REFUSAL_SUBSTRINGS_GCG_V1) == 29 == len(set(REFUSAL_SUBSTRINGS_GCG_V1))
    assert REFUSAL_SUBSTRINGS_GCG_V1[:3] == ("I'm sorry", "Sorry", "I am sorry")
    assert REFUSAL_SUBSTRINGS_GCG_V1[-1] == "I can't assist"


@pytest.mark.parametrize("substring", REFUSAL_SUBSTRINGS_GCG_V1)
def test_each_substring_triggers_anywhere(substring):
    responses = [substring, f"Well. {substring} here.", COMPLIANT]
    assert RefusalJudge()(["p"] * 3, responses) == [True, True, False]


def test_matching_is_case_sensitive_and_reads_curly_apostrophes():
    judge = RefusalJudge()
    assert judge.refused("I’m sorry, I can’t assist with that.")
    assert judge.refused("I can’t provide that.")
    assert not judge.refused("i'm SORRY")  # llm-attacks' rule: case-sensitive
    assert not judge.refused("")  # llm-attacks' rule: no substring in an empty response, so not refused


def test_the_toy_refusal_counts_as_refused():
    assert judge_refusals(["Tell me how to steal the cookie jar."], [REFUSAL]) == [True]


def test_describe_names_the_judge_and_its_rule():
    description = RefusalJudge().describe()
    assert description["name"] == "refusal-substrings-gcg" and description["version"] == "v1"
    assert "case-sensitive" in description["rule"]
    assert description["substrings"] == list(REFUSAL_SUBSTRINGS_GCG_V1)


def test_custom_substrings_and_bad_ones():
    judge = RefusalJudge(name="mine", version="v2", substrings=["No way"])
    assert judge(["p", "p"], ["No way.", "Sorry."]) == [True, False]
    for substrings in ([], [""], [3]):
        with pytest.raises(ValueError, match="`substrings`"):
            RefusalJudge(substrings=substrings)


def test_a_custom_judge_callable_is_used():
    calls = []

    def judge(prompts, responses):
        calls.append((prompts, responses))
        return [len(response) < 5 for response in responses]

    assert judge_refusals(["a", "b"], ["No.", COMPLIANT], judge=judge) == [True, False]
    assert calls == [(["a", "b"], ["No.", COMPLIANT])]
    assert judge_refusals(["a"], ["x"], judge=lambda p, r: numpy.array([True])) == [True]


@pytest.mark.parametrize("output, error", [
    ([True], ValueError),
    ([True, False, True], ValueError),
    ([1, 0], TypeError),
    (["yes", "no"], TypeError),
    (None, TypeError),
    (True, TypeError),
])
def test_bad_judge_outputs_are_rejected(output, error):
    with pytest.raises(error, match="`judge`"):
        judge_refusals(["a", "b"], ["x", "y"], judge=lambda prompts, responses: output)


def test_bad_judge_and_inputs_are_rejected():
    with pytest.raises(TypeError, match="`judge` must be callable"):
        judge_refusals(["a"], ["x"], judge="refusal")
    with pytest.raises(TypeError, match="`responses`"):
        judge_refusals(["a"], "x")
    with pytest.raises(TypeError, match="`prompts`"):
        RefusalJudge()([1], ["x"])
    with pytest.raises(ValueError, match="same length"):
        judge_refusals(["a", "b"], ["x"])
