"""Settings for one pipeline run: an endpoint per role, forward-sampling sizes and reward choices.

Every place where the paper and the reference code disagree is a field here, recorded with each
run's outputs (`as_record`), so a result always says which choice produced it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from models_serving.client import EndpointSpec
from training.pipeline.tasks import TaskKind

JsonMode = Literal["json_schema", "json_object", "none"]
ROLES = ("policy", "user", "judge", "extractor")

# Paper §3.2: lambda 1e-4 for documents, 5e-4 for code and math.
PAPER_TOKEN_LAMBDA: dict[TaskKind, float] = {"document": 1e-4, "code": 5e-4, "math": 5e-4}


@dataclass(frozen=True)
class Role:
    """One role's endpoint, its sampling parameters and how its server constrains JSON output.

    json_mode: vLLM takes "json_schema"; the llama.cpp server takes "json_object" with a schema.
    """

    endpoint: EndpointSpec
    params: dict[str, Any] = field(default_factory=dict)
    json_mode: JsonMode = "json_schema"
    system_prompt: str = ""  # the policy's arm prompt; unused for the other roles


@dataclass(frozen=True)
class Roles:
    policy: Role
    user: Role
    judge: Role
    extractor: Role

    @classmethod
    def single(cls, role: Role) -> Roles:
        """Every role served by the same endpoint (the CPU smoke run)."""
        return cls(policy=role, user=role, judge=role, extractor=role)


@dataclass(frozen=True)
class RewardSettings:
    """R* = task_weight·TaskMetric - token_weight·penalty + interactivity_weight·ITR.

    token_lambda None takes the paper's per-kind value. The paper clamps the penalty at 1 and counts
    the tokens the user reads and writes; the reference code clamps nothing and counts the
    assistant's tokens only: token_clamp=False, token_scope="assistant" reproduces it. The
    interactivity judge scores 1-5 on a rubric, mapped to the paper's [0, 1] as (score - 1) / 4.
    """

    token_lambda: float | None = None
    token_clamp: bool = True
    token_scope: Literal["assistant", "assistant+user"] = "assistant+user"
    task_weight: float = 1.0
    token_weight: float = 1.0
    interactivity_weight: float = 1.0
    math_judge: bool = False  # ask the judge when normalised comparison says "not equal"
    code_timeout_s: float = 10.0
    code_memory_mb: int = 512

    def penalty_lambda(self, kind: TaskKind) -> float:
        return PAPER_TOKEN_LAMBDA[kind] if self.token_lambda is None else self.token_lambda


@dataclass(frozen=True)
class SamplingSettings:
    """Forward sampling: w more turns, S rollouts, K candidates per turn (paper: w 2, S 3, K 2)."""

    window: int = 2
    samples: int = 3
    candidates: int = 2
    max_turns: int = 5
    max_in_flight: int = 32  # model calls in flight at once across all rollouts of a step
    user_retries: int = 2  # extra attempts when the simulator's JSON cannot be read
    candidate_temperature: float = 0.8
    # A candidate needs this many rollouts that did not fail (a model server error, a simulator
    # that could not be read) to be ranked; None: half of samples, rounded up.
    min_successful_rollouts: int | None = None

    def __post_init__(self) -> None:
        for name in ("window", "samples", "candidates", "max_turns", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.user_retries < 0:
            raise ValueError("user_retries must be 0 or more")
        least = self.min_successful_rollouts
        if least is not None and not 1 <= least <= self.samples:
            raise ValueError(f"min_successful_rollouts must be 1 to samples, got {least}")

    def min_successful(self) -> int:
        """Successful rollouts a candidate needs to be ranked."""
        if self.min_successful_rollouts is not None:
            return self.min_successful_rollouts
        return math.ceil(self.samples / 2)


def role_from(config: dict[str, Any], defaults: dict[str, Any] | None = None) -> Role:
    """A Role from a config mapping (base_url, model, params, json_mode, system_prompt)."""
    merged = {**(defaults or {}), **config}
    endpoint = EndpointSpec(
        base_url=merged["base_url"],
        model=merged["model"],
        read_timeout=float(merged.get("read_timeout", 300)),
    )
    return Role(
        endpoint,
        dict(merged.get("params", {})),
        merged.get("json_mode", "json_schema"),
        merged.get("system_prompt", ""),
    )


def roles_from_config(config: dict[str, Any]) -> Roles:
    """Every role from a config file's mapping: its own entry over the shared `endpoint`."""
    default = config.get("endpoint", {})
    return Roles(**{name: role_from(config.get(name, {}), default) for name in ROLES})


def as_record(sampling: SamplingSettings, reward: RewardSettings) -> dict[str, Any]:
    """The settings as stored beside every dataset and benchmark table."""
    return {"sampling": asdict(sampling), "reward": asdict(reward)}
