"""What each generation mode is, in one table: `MODE_SPECS`.

A mode is a procedure of one prompt, the same steps in the same order for every mode (the
engine, `spri_sft.generate.engine.Engine.run`, follows them top-down):

1. Stage I (`principles_stage`, SPRI only): the base model drafts principles for the prompt and
   the critic scores them, with revisions (the loop rules are in the engine's docstring).
2. The answer (`answer`): one base-model call, built as the mode's request says; or, for
   `oracle`, the prompt dataset's own response and no call. A fixed-rules mode (`rules`) sends
   its rule list in the system prompt.
3. Refinement (`refine`): `critic` runs SPRI's Stage II, the critic scoring the answer against
   the Stage I principles or the fixed rules, with revisions; `self` has the base model give
   itself feedback and refine (self-refine); None keeps the answer as it is.

Everything else about a mode follows from these fields or sits beside them: the roles it calls,
the loop settings and prompt texts that shape its records (`generate.identity`), the call bounds
`spri-sft plan`/`generate` print, its row of the paper's Table 4 (`pipeline.report`), and the
sentence the dataset card says about it (`format.card`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How a mode's answer is made: a request of the engine's request builders (`PackageRequests`,
# `OfficialRequests`), or "dataset" (the prompt dataset's own response, no call).
Answer = Literal["dataset", "direct", "self_instruct", "fixed_rules", "self_refine_answer", "response_draft"]
# The fixed rule lists: the seed pairs' principles, or the package's constitution (the paper's
# Dromedary "Watson" prompt in the released texts).
FixedRules = Literal["seed_pairs", "constitution"]
Refine = Literal["critic", "self"]

# The loop settings a critic-scored stage reads (see the engine's loop rules).
CRITIC_LOOP = ("threshold", "max_rounds", "score_retries", "unscored")
# Loop settings that only shape the package's own texts: no released text reads them.
PACKAGE_ONLY_FIELDS = ("max_words", "few_shot")


@dataclass(frozen=True)
class PaperRow:
    """A row of the SPRI paper's Table 4: its position (1 = first) and its label in `data/paper_table4.csv`."""

    number: int
    label: str


@dataclass(frozen=True)
class ModeSpec:
    name: str
    # One sentence that is true of what the engine does for this mode (the dataset card prints it).
    description: str
    answer: Answer
    refine: Refine | None = None
    principles_stage: bool = False
    rules: FixedRules | None = None
    # The loop settings (`LoopSettings` fields) the mode reads: part of its records' identity.
    loop_fields: tuple[str, ...] = ()
    # The texts the mode sends: fields of `PromptSet`, and names of `official.official_texts`.
    package_texts: tuple[str, ...] = ()
    official_texts: tuple[str, ...] = ()
    paper_row: PaperRow | None = None
    # Old names still accepted on input; a record always carries `name`.
    aliases: tuple[str, ...] = ()
    # How readers know the method, where that is not the mode's name (the card's heading).
    title: str | None = None

    def __post_init__(self):
        if (self.answer == "fixed_rules") != (self.rules is not None):
            raise ValueError(f"mode {self.name}: spec broken: a fixed-rules answer, and only it, names its rules")
        if self.refine == "critic" and not (self.principles_stage or self.rules):
            raise ValueError(f"mode {self.name}: spec broken: the critic needs principles or rules to judge against")

    @property
    def critic_judges(self) -> bool:
        """Whether the critic model scores this mode's versions (Stage I, or the Stage II loop)."""
        return self.principles_stage or self.refine == "critic"

    @property
    def scored(self) -> bool:
        """Whether any version is scored 1-5 (by the critic, or by the base model itself)."""
        return self.critic_judges or self.refine == "self"

    @property
    def roles(self) -> tuple[str, ...]:
        """The model roles the mode calls: a role it never calls cannot change its records."""
        base = () if self.answer == "dataset" else ("base",)
        return base + (("critic",) if self.critic_judges else ())

    def calls_per_prompt(self, max_rounds: int, score_retries: int) -> dict[str, tuple[int, int]]:
        """The fewest and most calls of each role one prompt takes, from the loop's round limits."""
        # Every critique may be asked again `score_retries` times for a missing score.
        critiques = max_rounds * (1 + score_retries)
        calls = {"base": [0, 0], "critic": [0, 0]}

        def add(role: str, fewest: int, most: int) -> None:
            calls[role][0] += fewest
            calls[role][1] += most

        if self.principles_stage:  # a draft and up to max_rounds - 1 revisions, each critiqued
            add("base", 1, max_rounds)
            add("critic", 1, critiques)
        if self.answer != "dataset":
            add("base", 1, 1)
        if self.refine == "critic":  # the answer critiqued, up to max_rounds - 1 revisions
            add("base", 0, max_rounds - 1)
            add("critic", 1, critiques)
        if self.refine == "self":  # up to max_rounds feedbacks, a refinement after each failing one
            add("base", 1, critiques)
            add("base", 0, max_rounds)
        return {role: (fewest, most) for role, (fewest, most) in calls.items()}


_SPRI_PACKAGE_TEXTS = (
    "principles_system",
    "principles_user",
    "principles_critic",
    "principles_revise",
    "response_system",
    "response_critic",
    "response_revise",
)
_SPRI_OFFICIAL_TEXTS = (
    "principles_generate",
    "principles_examples",
    "principles_critique",
    "principles_refine",
    "response_generate",
    "response_critique",
    "response_refine",
)

# In the order `spri-sft generate --help` lists them and the viewer shows them: spri, Table 4's
# baselines, then the critic variants of the fixed-rule modes.
MODE_SPECS: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        ModeSpec(
            name="spri",
            title="SPRI",
            description="Situated-PRInciples (Zhan et al., ICML 2025): the base model drafts principles for the "
            "prompt and the critic scores them 1-5, the base model revising them until they pass or `max_rounds` "
            "critiques are spent (Stage I); the base model then answers guided by them and the critic scores the "
            "answer against them, again with revisions (Stage II).",
            principles_stage=True,
            answer="response_draft",
            refine="critic",
            loop_fields=(*CRITIC_LOOP, "max_words", "few_shot"),
            package_texts=_SPRI_PACKAGE_TEXTS,
            official_texts=_SPRI_OFFICIAL_TEXTS,
            paper_row=PaperRow(7, "spri"),
        ),
        ModeSpec(
            name="oracle",
            description="The prompt dataset's own response (`prompts.response_column`, such as Dolly's `response`); "
            "no model is called.",
            answer="dataset",
            paper_row=PaperRow(1, "oracle"),
        ),
        ModeSpec(
            name="direct",
            description="The base model answers the prompt once; nothing scores or revises the answer.",
            answer="direct",
            loop_fields=("max_words",),
            package_texts=("direct_system",),
            official_texts=("direct_system", "direct_user"),
            paper_row=PaperRow(2, "direct"),
        ),
        ModeSpec(
            name="self-instruct",
            description="The base model answers once, with Self-Instruct's 11 Task/Output demonstrations as the "
            "system prompt and `Task: {prompt}` / `Output:` as the user turn; nothing scores or revises the answer.",
            answer="self_instruct",
            package_texts=("self_instruct_system", "self_instruct_user"),
            official_texts=("self_instruct_system",),
            paper_row=PaperRow(3, "self-instruct"),
        ),
        ModeSpec(
            name="self-refine",
            description="The base model answers, then gives itself feedback with a 1-5 score and refines the answer "
            "after every feedback that does not reach `threshold`, up to `max_rounds` feedbacks (the refinement after "
            "the last one is kept without feedback of its own).",
            answer="self_refine_answer",
            refine="self",
            loop_fields=("threshold", "max_rounds", "score_retries", "max_words"),
            package_texts=("direct_system", "self_critic", "response_revise"),
            official_texts=("self_refine_answer_system", "self_refine_feedback_system", "self_refine_refine_system"),
            paper_row=PaperRow(5, "self-refine"),
        ),
        ModeSpec(
            name="seed-principles",
            description="The base model answers once, with the seed pairs' principles as fixed rules in the system "
            "prompt; nothing scores or revises the answer.",
            answer="fixed_rules",
            rules="seed_pairs",
            package_texts=("rules_system", "seed_pairs"),
            official_texts=("seed_principles_system",),
            paper_row=PaperRow(6, "seed-principles"),
        ),
        ModeSpec(
            name="self-align",
            description="The base model answers once, with a fixed list of rules as the system prompt (the paper's: "
            "Dromedary's \"Watson\" prompt; the package's: a 16-rule constitution); nothing scores or revises the "
            "answer.",
            answer="fixed_rules",
            rules="constitution",
            package_texts=("rules_system", "constitution"),
            official_texts=("self_align_system",),
            paper_row=PaperRow(4, "self-align"),
            aliases=("constitution",),
        ),
        ModeSpec(
            name="seed-principles-critic",
            description="The seed-principles answer, then SPRI's Stage II: the critic scores it 1-5 against the "
            "seed pairs' principles and the base model revises it until it passes or `max_rounds` critiques are spent.",
            answer="fixed_rules",
            rules="seed_pairs",
            refine="critic",
            loop_fields=(*CRITIC_LOOP, "max_words"),
            package_texts=("rules_system", "seed_pairs", "response_critic", "response_revise"),
            official_texts=("seed_principles_system", "response_critique", "response_refine"),
        ),
        ModeSpec(
            name="self-align-critic",
            description="The self-align answer, then SPRI's Stage II: the critic scores it 1-5 against the fixed rule "
            "list and the base model revises it until it passes or `max_rounds` critiques are spent.",
            answer="fixed_rules",
            rules="constitution",
            refine="critic",
            loop_fields=(*CRITIC_LOOP, "max_words"),
            package_texts=("rules_system", "constitution", "response_critic", "response_revise"),
            official_texts=("self_align_system", "response_critique", "response_refine"),
        ),
    )
}

# Every name a mode may be given: the canonical names, then the old ones still accepted.
ALIASES = {alias: spec.name for spec in MODE_SPECS.values() for alias in spec.aliases}
MODES = (*MODE_SPECS, *ALIASES)
Mode = Literal[MODES]  # type: ignore[valid-type]  # the config reader checks a value against get_args(Mode)
# The paper's Table 4 rows that are modes, in its order.
TABLE4_MODES = tuple(
    spec.name
    for spec in sorted(MODE_SPECS.values(), key=lambda s: s.paper_row.number if s.paper_row else 0)
    if spec.paper_row
)
MODE_ROLES = {mode: MODE_SPECS[ALIASES.get(mode, mode)].roles for mode in MODES}


def mode_spec(mode: str) -> ModeSpec:
    """The spec of `mode`, given by its name or an alias."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    return MODE_SPECS[ALIASES.get(mode, mode)]


def canonical_mode(mode: str) -> str:
    return mode_spec(mode).name
