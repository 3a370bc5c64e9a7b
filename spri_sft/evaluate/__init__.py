"""adapter/model → scores: TruthfulQA MC1/MC2 exactly as lm-evaluation-harness computes them.

    from spri_sft.evaluate import EvaluateConfig, evaluate_truthfulqa
    results = evaluate_truthfulqa(EvaluateConfig(model=..., adapter=..., truthfulqa_file="mc_task.json"))

Modules: `config.py` (EvaluateConfig), `truthfulqa.py` (data, lm-eval's prompt and metrics),
`scoring.py` (log-likelihoods tokenized as lm-eval's HFLM, one prompt pass per question),
`run.py` (loading, the loop, results.json / per_question.jsonl, W&B), `callback.py` (scores
before and after a training, as a TrainerCallback). Heavy imports (torch,
transformers) happen inside the functions, so importing this package is instant.
"""

from spri_sft.evaluate.config import EvaluateConfig
from spri_sft.evaluate.run import evaluate_truthfulqa

__all__ = ["EvaluateConfig", "evaluate_truthfulqa"]
