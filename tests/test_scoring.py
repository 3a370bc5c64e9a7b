"""Reading a score and feedback out of critic replies of varied styles."""

import pytest

from spri_sft.generate.scoring import parse_feedback, parse_score, released_feedback

# Replies as Prometheus-2, instruct models used as judges, and models giving themselves feedback write them.
REPLIES = [
    # Prometheus-2's own format, and the variants of the released `extract_evaluation_score`.
    ("Feedback: The principles cover the key risks. [RESULT] 4", 4),
    ("Feedback: Thorough.\n[RESULT] 5\n", 5),
    ("Feedback: The response ignores the second principle entirely. [RESULT]1", 1),
    ("[RESULT]: 3", 3),
    ("Feedback: Clear and relevant. [RESULT]: 4", 4),
    ("Feedback: Mostly on point.\nRESULT: 4", 4),
    ("[RESULT] (2)", 2),
    ("[result] 1", 1),
    ("[RESULT] 4.0", 4),
    ("Feedback: It follows the principles but is wordy. [SCORE] 3", 3),
    ("The answer is accurate but too long. [Score: 3]", 3),
    ("The principles are useful and broadly applicable.\n\n[4]", 4),
    ("The principles are useful and broadly applicable. [5]", 5),
    ("The response is relevant but misses details.\n\nOverall Score: 3", 3),
    # The first score marker counts, as in the released scripts (its feedback is the text before it).
    ("Feedback: Too vague. [RESULT] 2\n\nFeedback: Now better. [RESULT] 4", 2),
    ("Feedback: Off scale [RESULT] 7, I mean [RESULT] 3", 3),
    # A restated format or rubric is not a score; the verdict after it is.
    ('Format: "Feedback: ... [RESULT] (an integer number between 1 and 5)"\nFeedback: Good. [RESULT] 4', 4),
    ("Score 1: useless. Score 5: excellent.\nFeedback: Mostly relevant. [RESULT] 3", 3),
    ("A score of 2 would be unfair here. [RESULT] 4", 4),
    # Declared scores of instruct-model judges.
    ("Score: 4/5", 4),
    ("**Score:** 3 out of 5", 3),
    ("Rating: 2", 2),
    ("Overall, the score is 5.", 5),
    ("score=2", 2),
    ("The principles are specific and actionable, so I give them a score of 4.", 4),
    ("Final score: 5", 5),
    ("**Feedback:** Concise and on topic.\n**Score**: 4", 4),
    ("Score 4: The response adheres quite well.\nSo my score: 4", 4),
    # A reply that is only the number.
    ("4", 4),
    ("  **5**  ", 5),
    ("(3)", 3),
]

NO_SCORE = [
    "The principles look good overall.",
    "Here are 5 reasons the response works.",
    "The response meets Score 4 but not Score 5.",
    "It clearly meets the Score 4 description.",
    "Score 1: The principles are irrelevant.\nScore 2: They are minimally useful.",
    "It does not deserve a score of 5.",
    "This is better than a score of 3.",
    "A score of 4 or 5 would both be defensible.",
    "[RESULT] 7",
    "[RESULT] 0",
    "[RESULT] 10",
    "[RESULT] 4.5",
    "Score: 8/10",
    "Feedback: (write a feedback based on the evaluation criteria) [RESULT] (an integer number between 1 and 5)",
    "",
]


@pytest.mark.parametrize("reply, score", REPLIES)
def test_score_is_read_from_common_critic_styles(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply", NO_SCORE)
def test_reply_without_a_verdict_in_range_has_no_score(reply):
    assert parse_score(reply) is None


def test_the_table_has_thirty_real_looking_replies():
    assert len(REPLIES) + len(NO_SCORE) >= 30


def test_feedback_drops_the_label_and_the_score():
    assert parse_feedback("Feedback: Misses the safety angle. [RESULT] 2") == "Misses the safety angle."


def test_feedback_without_marker_is_the_whole_reply():
    assert parse_feedback("Too vague to act on.") == "Too vague to act on."


def test_released_feedback_is_the_text_before_the_first_result_marker_label_kept():
    reply = "Feedback: Misses the safety angle. [RESULT] 2\nFeedback: again [RESULT] 3"
    assert released_feedback(reply) == "Feedback: Misses the safety angle."
