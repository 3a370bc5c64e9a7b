"""What shapes a generate run's records: the one definition behind record ids, journal keys and the
pipeline's generate stage, so that none of them can drift from the others.

A record is shaped by its prompt, by what its mode sends and reads (`engine.mode_identity`: the
mode, the templates, the loop settings it uses) and by the decoding settings of the roles the
mode calls (`engine.MODE_ROLES`): the critic of a `direct` run shapes nothing, so changing it
changes no id. Concurrency, budgets, URLs and progress bars shape nothing either.
"""

from __future__ import annotations

import hashlib
import json

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import mode_identity
from spri_sft.generate.modes import MODE_ROLES
from spri_sft.generate.prompts import PromptSet
from spri_sft.llm.base import EndpointConfig


def request_settings(endpoint: EndpointConfig) -> dict:
    """Everything besides the messages that decides one reply of this role (model and sampling)."""
    return endpoint.decoding()


def generation_identity(config: GenerateConfig, templates: PromptSet) -> dict:
    """What shapes every record of this configuration besides its prompt."""
    endpoints = {"base": config.base, "critic": config.critic}
    return {
        **mode_identity(config.mode, templates, config.loop),
        "decoding": {role: request_settings(endpoints[role]) for role in MODE_ROLES[config.mode]},
    }


def record_id(prompt: str, identity: dict) -> str:
    """A stable hash of the prompt and the generation identity: equal ids mean interchangeable records."""
    return digest({"prompt": prompt, **identity})


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
