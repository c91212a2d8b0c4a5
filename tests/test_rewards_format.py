"""Answer-region and format checks (seed Algorithm 1: ExtractAnswer + FormatReward)."""

import pytest

from medverl.rewards import answer_region, check_format


@pytest.mark.parametrize(
    ("output", "answer_or_reason"),
    [
        # the canonical shape
        ("<think>Consolidation in the RLL.</think>\n<answer>B</answer>", "B"),
        # no think block at all: the whole output is the answer region
        ("<answer>Pleural effusion</answer>", "Pleural effusion"),
        # text around the answer tag is allowed
        ("<think>r</think> So: <answer> yes </answer> done.", "yes"),
        # an answer spread over lines keeps its lines
        ("<think>r</think><answer>left lower\nlobe</answer>", "left lower\nlobe"),
        # an <answer> echoed inside the reasoning is not the answer
        ("<think>maybe <answer>C</answer>?</think><answer>B</answer>", "B"),
        # only the text after the LAST </think> counts
        ("<think>a</think><answer>C</answer><think>b</think><answer>B</answer>", "B"),
        # two answers in the answer region
        ("<think>r</think><answer>B</answer><answer>C</answer>", "!answer region has 2 <answer> tags"),
        # nested answers
        ("<answer><answer>B</answer></answer>", "!answer region has 2 <answer> tags"),
        # one opening tag, two closing ones
        ("<answer>B</answer></answer>", "!answer region has 2 </answer> tags"),
        # no answer tag
        ("<think>r</think>The answer is B.", "!no <answer> tag"),
        # truncated output: the answer never closed
        ("<think>r</think><answer>Pneumo", "!unclosed <answer> (truncated output)"),
        # truncated output: the reasoning never closed, although it contains an answer
        ("<think>I think <answer>B</answer> because", "!unclosed <think> (truncated reasoning)"),
        # tags in the wrong order
        ("</answer>B<answer>", "!</answer> before <answer>"),
        # empty and blank answers
        ("<answer></answer>", "!empty <answer>"),
        ("<answer> \n\t </answer>", "!empty <answer>"),
        # zero-width characters only: still blank
        ("<answer>\u200b\ufeff</answer>", "!empty <answer>"),
        # punctuation is content (accuracy decides whether it means anything)
        ("<answer>.</answer>", "."),
        # upper-case tags are not tags
        ("<ANSWER>B</ANSWER>", "!no <answer> tag"),
        # empty output
        ("", "!no <answer> tag"),
    ],
)
def test_check_format(output: str, answer_or_reason: str) -> None:
    fmt = check_format(output)
    if answer_or_reason.startswith("!"):
        assert not fmt.ok and fmt.answer == ""
        assert fmt.reason == answer_or_reason[1:]
    else:
        assert fmt.ok and fmt.reason == ""
        assert fmt.answer == answer_or_reason


@pytest.mark.parametrize(
    ("output", "ok"),
    [
        ("<think>x</think><answer>B</answer>", True),
        # leading whitespace before <think> is fine
        ("\n <think>x</think><answer>B</answer>", True),
        # no think block
        ("<answer>B</answer>", False),
        # empty think block
        ("<think> </think><answer>B</answer>", False),
        # text before the think block
        ("Sure! <think>x</think><answer>B</answer>", False),
        # two think blocks
        ("<think>x</think><think>y</think><answer>B</answer>", False),
        # close before open
        ("</think><think><answer>B</answer>", False),
    ],
)
def test_require_think(output: str, ok: bool) -> None:
    assert check_format(output, require_think=True).ok is ok


@pytest.mark.parametrize(
    ("output", "require_think", "ok"),
    [
        # the template opened <think>; the response closes it
        ("reasoning</think><answer>B</answer>", False, True),
        ("reasoning</think><answer>B</answer>", True, True),
        # the reasoning never closed: everything is still inside the prefilled think block
        ("reasoning <answer>B</answer>", False, False),
        # require_think: a second <think> is not one block
        ("a</think><think>b</think><answer>B</answer>", True, False),
        # require_think: blank reasoning
        ("  </think><answer>B</answer>", True, False),
    ],
)
def test_think_prefilled(output: str, require_think: bool, ok: bool) -> None:
    assert check_format(output, think_prefilled=True, require_think=require_think).ok is ok


def test_answer_region_is_after_last_think_close() -> None:
    assert answer_region("a</think>b</think>c") == "c"
    assert answer_region("no think") == "no think"
