"""Restart policies as data (observatory/supervision.py)."""
import pytest

from observatory.supervision import ChildSpec, RestartPolicy, StuckWatch, child_specs


def test_first_restart_is_immediate_then_back_off_doubles_until_the_budget_is_spent():
    policy = RestartPolicy(ChildSpec("cam01", "camera", max_restarts=4, period_s=60, backoff_initial_s=0.5,
                                     backoff_max_s=1.5))
    delays = [policy.on_exit(100.0 + i) for i in range(5)]
    assert [d.action for d in delays] == ["restart"] * 4 + ["give_up"]
    assert [d.delay_s for d in delays[:4]] == [0.0, 0.5, 1.0, 1.5]
    assert "restart budget spent (4 restarts in 60 s)" in delays[4].reason


def test_the_window_slides_so_a_quiet_spell_restores_the_budget_and_immediate_restarts():
    policy = RestartPolicy(ChildSpec("mount", "mount", max_restarts=2, period_s=10))
    assert policy.on_exit(0.0).action == "restart"
    assert policy.on_exit(1.0).delay_s == 0.5
    assert policy.on_exit(2.0).action == "give_up"
    later = policy.on_exit(30.0)
    assert later.action == "restart" and later.delay_s == 0.0


def test_temporary_and_transient_children():
    assert RestartPolicy(ChildSpec("foc00", "focuser", restart="temporary")).on_exit(0).action == "give_up"
    transient = RestartPolicy(ChildSpec("foc00", "focuser", restart="transient"))
    assert transient.on_exit(0, abnormal=False).action == "ignore"
    assert transient.on_exit(0, abnormal=True).action == "restart"


def test_specs_from_configuration_with_per_child_overrides():
    sup = {"max_restarts": 5, "restart_period": 60.0, "backoff_initial": 0.25, "backoff_max": 8.0,
           "children": {"cam01": {"restart": "temporary", "max_restarts": None},
                        "mount": {"max_restarts": 10, "period_s": 600.0}}}
    specs = child_specs([("mount", "mount"), ("cam01", "camera"), ("cam00", "camera")], sup, ("mount",))
    assert specs["mount"].max_restarts == 10 and specs["mount"].period_s == 600.0 and specs["mount"].vital
    assert specs["cam01"].restart == "temporary" and specs["cam01"].max_restarts == 5
    assert specs["cam00"].backoff_initial_s == 0.25 and not specs["cam00"].vital


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="restart must be"):
        ChildSpec("x", "camera", restart="sometimes")
    with pytest.raises(ValueError, match="bad restart budget"):
        ChildSpec("x", "camera", backoff_initial_s=5, backoff_max_s=1)


def test_stuck_watch_fires_once_a_step_waits_for_nothing_long_enough_in_both_clocks():
    watch = StuckWatch(sim_s=600.0, wall_s=30.0)
    step = ("tracking", 1000.0)
    assert watch.observe(False, step, 1000.0, 0.0) is None          # the count starts
    assert watch.observe(False, step, 1700.0, 10.0) is None         # simulated time enough, wall not
    assert watch.observe(False, step, 1500.0, 40.0) is None         # wall enough, simulated not
    assert watch.observe(False, step, 1650.0, 41.0) == pytest.approx(650.0)
    assert watch.observe(False, step, 1651.0, 42.0) is None         # fired: the count starts again


def test_stuck_watch_restarts_its_count_for_a_new_step_or_anything_under_way():
    watch = StuckWatch(sim_s=600.0, wall_s=30.0)
    watch.observe(False, ("tracking", 0.0), 0.0, 0.0)
    assert watch.observe(False, ("observing", 500.0), 700.0, 40.0) is None    # a new step: from 700
    assert watch.observe(False, ("observing", 500.0), 1200.0, 80.0) is None
    assert watch.observe(True, ("observing", 500.0), 1400.0, 90.0) is None    # a deadline was set
    assert watch.observe(False, ("observing", 500.0), 1500.0, 100.0) is None  # from 1500
    assert watch.observe(False, ("observing", 500.0), 2100.0, 130.0) == pytest.approx(600.0)
