"""What a private run composes: each mechanism's sample rate and steps, sigma from a target
epsilon (checked before any work starts), and the epsilon a client has spent so far."""

from __future__ import annotations

import warnings

from flwr.app import ConfigRecord, RecordDict

from fedsim.config import RESOLVERS, PrivacyConfig, Scenario
from fedsim.data import client_data

from .accounting import calibrate, epsilon

SPENT = "privacy-steps"  # Context.state: noisy steps this client has taken


def sample_rate(privacy: PrivacyConfig, params, n: int) -> float:
    """q: Poisson batch rate (dp_sgd), cohort rate (dp_fedavg), or 1 (local)."""
    if privacy.mechanism == "dp_sgd":
        return min(1.0, params.batch_size / n) if params.batch_size else 1.0
    return params.fraction if privacy.mechanism == "dp_fedavg" else 1.0


def planned_steps(scenario: Scenario, n: int) -> int:
    """Noisy steps of the most exposed client over the run (it takes part in every round):
    the gradients its method plans under dp_sgd, one release a round otherwise."""
    if scenario.privacy.mechanism != "dp_sgd":
        return scenario.rounds
    return scenario.method.planned_grad_evals(scenario.algorithm, n, scenario.rounds, scenario.seed)


def smallest_client(scenario: Scenario) -> int:
    cfg, seed = scenario.data, scenario.seed
    return min(len(client_data(cfg, seed, i)[1]) for i in range(cfg.num_clients))


def resolve_privacy(scenario: Scenario) -> Scenario:
    """sigma from the target epsilon for the most exposed client; a target that cannot be
    met, or an unsupported combination, is a ValueError naming the key."""
    p = scenario.privacy
    if not p.active:
        return scenario
    n = smallest_client(scenario) if p.mechanism == "dp_sgd" else scenario.data.num_clients
    if p.delta >= 1 / n:
        unit = "examples of the smallest client" if p.mechanism == "dp_sgd" else "clients"
        warnings.warn(f"privacy.delta: {p.delta} >= 1/{n} ({n} {unit}): weak", stacklevel=2)
    if p.noise_multiplier is not None:
        return scenario
    q, steps = sample_rate(p, scenario.algorithm, n), planned_steps(scenario, n)
    try:
        sigma = calibrate(p.accountant, p.epsilon, q, steps, p.delta)
    except ValueError:
        raise ValueError(
            f"privacy.epsilon: {p.epsilon} cannot be met at delta {p.delta} over {steps} steps"
            f" at sample rate {q:.3g}"
        ) from None
    return scenario.model_copy(update={"privacy": p.model_copy(update={"noise_multiplier": sigma})})


RESOLVERS.register("privacy", resolve_privacy, "sigma from a target epsilon, checked")


def spend(state: RecordDict, privacy: PrivacyConfig, q: float, steps: int) -> float:
    """Add this round's noisy steps to the client's count; its epsilon so far."""
    total = steps + (int(state[SPENT]["steps"]) if SPENT in state else 0)
    state[SPENT] = ConfigRecord({"steps": total})
    return epsilon(privacy.accountant, privacy.noise_multiplier, q, total, privacy.delta)


def metadata(scenario: Scenario, final_epsilon: float) -> dict:
    """The privacy block of summary.json."""
    p = scenario.privacy
    if not p.active:
        return {"mechanism": "none"}
    return {
        "mechanism": p.mechanism,
        "noise_multiplier": p.noise_multiplier,
        "max_grad_norm": p.max_grad_norm,
        "delta": p.delta,
        "accountant": p.accountant,
        "target_epsilon": p.epsilon,
        "final_epsilon": final_epsilon,
        "sample_rate": (
            "batch_size / n_i per client"
            if p.mechanism == "dp_sgd"
            else sample_rate(p, scenario.algorithm, 1)
        ),
        "batch_size": getattr(scenario.algorithm, "batch_size", None),
    }
