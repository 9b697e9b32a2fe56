"""The VLM rater's public names in one place; the code lives in `reward_models/vlm/`.

    from reward_models.vlm_rater import VLMRater, PairQuery
    rater = VLMRater.from_config(judge_cfg, model_path)
    judgements = rater.rate([PairQuery(pair_id, prompt, category, [img_a], [img_b])])
"""
from reward_models.vlm import *  # noqa: F403
from reward_models.vlm import __all__  # noqa: F401
