"""What a private run composes: each mechanism's sample rate and steps, sigma from a target
epsilon (checked before any work starts), and the epsilon a client has spent so far."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from fedsim.config import RESOLVERS, PrivacyConfig, Scenario, meta_model
from fedsim.data import client_data

from .accounting import calibrate, epsilon

if TYPE_CHECKING:  # flwr and torch (.clipping) where used: a scenario refused at load needs none
    from flwr.app import RecordDict

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


def check_clippable(scenario: Scenario) -> None:
    """DP-SGD clips per-example gradients of Linear, Conv2d and GroupNorm layers: another
    layer with parameters is refused here, before any work (the model is built on the meta
    device)."""
    from .clipping import unsupported

    why = unsupported(meta_model(scenario))
    if why:
        raise ValueError(
            f"model.name: {scenario.model.name!r} with privacy.mechanism 'dp_sgd': {why}"
        )


def resolve_privacy(scenario: Scenario) -> Scenario:
    """sigma from the target epsilon for the most exposed client; a target that cannot be
    met, or an unsupported combination, is a ValueError naming the key."""
    p = scenario.privacy
    if not p.active:
        return scenario
    if p.mechanism == "dp_sgd":
        check_clippable(scenario)
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


def every_round(scenario: Scenario):
    """r -> epsilon of the most exposed client had it taken part in each of rounds 1..r (the
    conservative report for dp_sgd and local, and what a target is calibrated for)."""
    p = scenario.privacy
    n = smallest_client(scenario) if p.mechanism == "dp_sgd" else scenario.data.num_clients
    q = sample_rate(p, scenario.algorithm, n)

    def spent(r: int) -> float:
        steps = planned_steps(scenario.model_copy(update={"rounds": r}), n)
        return epsilon(p.accountant, p.noise_multiplier, q, steps, p.delta)

    return spent


def reported(scenario: Scenario) -> str | None:
    """Which epsilon the rows carry: 'every_round', 'participation' (client-side mechanisms)
    or None (dp_fedavg's server-side accountant, or no privacy)."""
    p = scenario.privacy
    if p.mechanism not in ("dp_sgd", "local"):
        return None
    if p.epsilon_report:
        return p.epsilon_report
    return "participation" if scenario.system.policy == "fedbuff" else "every_round"


def spend(state: RecordDict, privacy: PrivacyConfig, q: float, steps: int) -> float:
    """Add this round's noisy steps to the client's count; its epsilon so far."""
    from flwr.app import ConfigRecord

    total = steps + (int(state[SPENT]["steps"]) if SPENT in state else 0)
    state[SPENT] = ConfigRecord({"steps": total})
    return epsilon(privacy.accountant, privacy.noise_multiplier, q, total, privacy.delta)


SAMPLING = {  # (what the accountant assumes, what the run does): the same by construction
    "dp_sgd": (
        "Poisson sampling of each client's examples at rate batch_size / n_i, composed over"
        " the client's noisy steps",
        "Poisson batches: each example independently with probability batch_size / n_i",
    ),
    "dp_fedavg": (
        "Poisson sampling of clients at rate algorithm.fraction, composed over rounds",
        "Poisson cohorts: each available client independently with probability"
        " algorithm.fraction (an empty cohort releases the noise alone)",
    ),
    "local": (
        "no sampling: every update a client sends is one Gaussian mechanism",
        "every update a client sends clipped and noised",
    ),
}


def metadata(scenario: Scenario, final_epsilon: float, participation: float | None) -> dict:
    """The privacy block of summary.json: the mechanism, its accountant and the sampling
    that accountant assumed next to the sampling the run used, and the epsilons."""
    p = scenario.privacy
    if not p.active:
        return {"mechanism": "none"}
    assumes, used = SAMPLING[p.mechanism]
    block = {
        "mechanism": p.mechanism,
        "noise_multiplier": p.noise_multiplier,
        "max_grad_norm": p.max_grad_norm,
        "delta": p.delta,
        "accountant": p.accountant,
        "accountant_assumes": assumes,
        "run_sampling": used,
        "target_epsilon": p.epsilon,
        "final_epsilon": final_epsilon,
        "epsilon_reported": reported(scenario) or "server",
        "sample_rate": (
            "batch_size / n_i per client"
            if p.mechanism == "dp_sgd"
            else sample_rate(p, scenario.algorithm, 1)
        ),
        "batch_size": getattr(scenario.algorithm, "batch_size", None),
    }
    if participation is not None:
        block["epsilon_participation"] = participation
    return block
