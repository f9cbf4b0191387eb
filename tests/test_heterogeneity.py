"""Client profiles, availability, failures and round policies against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedsim.codecs import fp32_bytes
from fedsim.config import ScenarioError
from fedsim.data import partition_indices
from fedsim.heterogeneity import Dist, Profiles, SystemConfig, failure_of, settle
from fedsim.results import read_metrics
from fedsim.runtime import launch

from .conftest import small_scenario

D = 64 * 32 + 32 + 32 * 10 + 10  # the small scenario's MLP


# ------------------------------------------------------------------ the clock


def test_round_time_uses_each_clients_own_profile(tmp_path):
    speeds, ups, lat = [100.0, 50.0, 400.0, 80.0, 120.0, 60.0], 1e4, [0.1, 0.2, 0.3, 0.0, 0.5, 0.1]
    s = small_scenario(
        rounds=1,
        system__speed=speeds,
        system__uplink=ups,
        system__downlink=2e4,
        system__latency_s=lat,
    )
    launch(s, tmp_path)
    row = read_metrics(tmp_path)[0]
    sizes = [len(p) for p in partition_indices(s.data, s.seed)]  # one epoch each
    b = fp32_bytes(D)
    by_hand = [lat[i] + b / 2e4 + sizes[i] / speeds[i] + b / ups for i in range(6)]
    assert row["sim_time_s"] == pytest.approx(max(by_hand), rel=1e-12)


def test_lognormal_profiles_have_the_requested_median_and_spread():
    cfg = SystemConfig(speed=Dist(dist="lognormal", median=200.0, sigma=0.5))
    speed = Profiles(cfg, 20_000, seed=1).speed
    assert np.median(speed) == pytest.approx(200.0, rel=0.03)
    assert np.std(np.log(speed)) == pytest.approx(0.5, rel=0.03)
    assert np.array_equal(speed, Profiles(cfg, 20_000, seed=1).speed)  # seeded


def test_a_per_client_list_of_the_wrong_length_fails_validation():
    with pytest.raises(ScenarioError) as e:
        small_scenario(system__speed=[1.0, 2.0])
    assert str(e.value) == ("scenario.system: speed: a list needs one value per client (6), got 2")


# ------------------------------------------------------------------ policies


TIMES = {10: 3.0, 11: 9.0, 12: 1.0, 13: 5.0, 14: math.inf}  # node 14 never replies
COHORT = [10, 11, 12, 13, 14]


def test_wait_all_waits_for_the_last_reply_and_the_timeout_of_a_silent_one():
    out = settle(SystemConfig(timeout_s=60.0), TIMES, COHORT, k=5)
    assert out.kept == [10, 11, 12, 13] and out.timed_out == [14] and out.late == []
    assert out.duration == 60.0
    done = settle(SystemConfig(), {n: t for n, t in TIMES.items() if n != 14}, COHORT[:4], k=4)
    assert done.duration == 9.0


def test_deadline_drops_exactly_the_clients_slower_than_it():
    out = settle(SystemConfig(policy="deadline", deadline_s=4.0), TIMES, COHORT, k=5)
    assert out.kept == [10, 12] and out.late == [11, 13] and out.timed_out == [14]
    assert out.duration == 4.0


def test_overcommit_keeps_the_first_k_to_finish():
    out = settle(SystemConfig(policy="overcommit", overcommit=0.5), TIMES, COHORT, k=3)
    assert out.kept == [10, 12, 13] and out.late == [11]  # cohort order, the 3 fastest
    assert out.duration == 5.0


def test_deadline_run_counts_late_clients(tmp_path):
    speeds = [1000.0, 1.0, 1000.0, 1.0, 1000.0, 1000.0]  # two hopeless stragglers
    s = small_scenario(
        rounds=2, system__speed=speeds, system__policy="deadline", system__deadline_s=5.0
    )
    launch(s, tmp_path)
    for row in read_metrics(tmp_path):
        assert (row["clients"], row["late"], row["invited"]) == (4, 2, 6)
        assert row["sim_time_s"] == pytest.approx(5.0 * row["round"])


def test_overcommit_run_invites_more_and_keeps_k(tmp_path):
    s = small_scenario(
        rounds=2, algorithm__fraction=0.5, system__policy="overcommit", system__overcommit=0.5
    )
    launch(s, tmp_path)
    for row in read_metrics(tmp_path):
        assert row["invited"] == math.ceil(3 * 1.5) and row["clients"] == 3
        assert row["late"] == row["invited"] - 3


# ------------------------------------------------------------------ availability


def test_bernoulli_and_markov_availability_rates():
    bern = Profiles(SystemConfig(availability={"kind": "bernoulli", "p": 0.3}), 5000, seed=2)
    assert bern.available(7, 0.0).mean() == pytest.approx(0.3, abs=0.03)
    chain = {"kind": "markov", "p_off": 0.2, "p_on": 0.6}
    markov = Profiles(SystemConfig(availability=chain), 5000, seed=2)
    stationary = 0.6 / (0.6 + 0.2)
    assert markov.available(50, 0.0).mean() == pytest.approx(stationary, abs=0.03)
    # persistence: a client on now is on next round with probability 1 - p_off
    now, nxt = markov.available(50, 0.0), markov.available(51, 0.0)
    assert nxt[now].mean() == pytest.approx(0.8, abs=0.03)


def test_trace_windows_decide_who_can_be_selected(tmp_path):
    trace = tmp_path / "windows.csv"
    trace.write_text("client,start_s,end_s\n0,0,100\n1,50,60\n2,0,1\n2,10,20\n")
    p = Profiles(SystemConfig(availability={"kind": "trace", "trace": str(trace)}), 4, seed=0)
    assert p.available(1, 0.5).tolist() == [True, False, True, False]
    assert p.available(1, 15.0).tolist() == [True, False, True, False]
    assert p.available(1, 55.0).tolist() == [True, True, False, False]
    assert p.available(1, 200.0).tolist() == [False, False, False, False]


def test_unavailable_clients_are_never_selected(tmp_path):
    trace = tmp_path / "w.csv"
    trace.write_text("client,start_s,end_s\n" + "".join(f"{i},0,1e9\n" for i in (0, 2, 5)))
    s = small_scenario(rounds=2, system__availability={"kind": "trace", "trace": str(trace)})
    launch(s, tmp_path / "run")
    for row in read_metrics(tmp_path / "run"):
        assert row["available"] == row["invited"] == row["clients"] == 3


# ------------------------------------------------------------------ failures


def test_injected_failures_are_counted_and_the_run_completes(tmp_path):
    f = {"raise_p": 0.2, "timeout_p": 0.1, "vanish_p": 0.15}
    s = small_scenario(rounds=6, system__failures=f, system__timeout_s=100.0)
    launch(s, tmp_path)
    rows = read_metrics(tmp_path)
    assert len(rows) == 6
    for row in rows:
        fates = [failure_of(s.system.failures, s.seed, row["round"], pid) for pid in range(6)]
        assert row["failures"] == fates.count("raise")
        assert row["timeouts"] == fates.count("timeout")
        assert row["dropouts"] == fates.count("vanish")
        assert row["clients"] == fates.count(None)
        if "timeout" in fates or "vanish" in fates:
            assert row["sim_time_s"] - (
                rows[row["round"] - 2]["sim_time_s"] if row["round"] > 1 else 0.0
            ) == pytest.approx(100.0)
    assert sum(r["failures"] + r["timeouts"] + r["dropouts"] for r in rows) > 0
