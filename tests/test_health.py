"""Health monitors: warnings when collapse_std, the Mixer's masks, ODC's clusters or SwAV's codes go wrong."""

from __future__ import annotations

import math

from ssmix.engine.health import HealthMonitor


def feed(monitor, rows, start=101):
    out = []
    for i, row in enumerate(rows):
        out.append(monitor.check(start + i, row))
    return out


def test_collapse_warns_once_after_patience_and_rearms_when_it_clears():
    monitor = HealthMonitor(embed_dim=100, total_steps=1000, patience=3)  # floor 0.2 / 10 = 0.02
    low, ok = {"collapse_std": 0.01}, {"collapse_std": 0.09}
    got = feed(monitor, [low, low, low, low, ok, low, low, low])
    assert [len(m) for m in got] == [0, 0, 1, 0, 0, 0, 0, 1]
    assert "collapse_std 0.0100 < 0.2/sqrt(D) = 0.0200" in got[2][0] and "step 103" in got[2][0]
    assert monitor.active == 1


def test_no_warning_during_the_grace_period_or_for_healthy_rows():
    monitor = HealthMonitor(embed_dim=128, total_steps=1000, patience=1)
    assert monitor.check(50, {"collapse_std": 0.0}) == []  # first 10 % of the schedule
    assert (
        monitor.check(
            200,
            {
                "collapse_std": 1 / math.sqrt(128),
                "mixer_mask_within_var": 0.03,
                "mixer_mask_saturated": 0.2,
                "odc_empty": 0,
                "odc_largest_vs_mean": 2.0,
            },
        )
        == []
    )
    assert monitor.active == 0


def test_mixer_and_odc_conditions():
    monitor = HealthMonitor(embed_dim=128, total_steps=100, patience=1)
    flat = monitor.check(50, {"mixer_mask_within_var": 0.001, "mixer_mask_saturated": 0.0})
    assert len(flat) == 1 and "flat" in flat[0]
    bad = monitor.check(
        51,
        {
            "mixer_mask_within_var": 0.001,
            "mixer_mask_saturated": 0.9,
            "odc_empty": 2,
            "odc_largest_vs_mean": 7.5,
        },
    )
    assert len(bad) == 3  # flat already warned; saturated, empty and giant are new
    assert any("saturated (90% of pixels" in m for m in bad)
    assert any("2 empty cluster(s)" in m for m in bad) and any("7.5x the mean size" in m for m in bad)
    assert monitor.active == 4


def test_uniform_swav_codes_warn_and_a_random_encoders_start_does_not():
    monitor = HealthMonitor(embed_dim=128, total_steps=100, patience=2)
    assert feed(monitor, [{"swav_code_entropy": 0.93}] * 3, start=20) == [[], [], []]
    got = feed(monitor, [{"swav_code_entropy": 0.998}] * 2, start=30)
    assert got[0] == [] and len(got[1]) == 1
    assert (
        "SwAV's codes are uniform (entropy 0.998 of ln K)" in got[1][0] and "method.temperature" in got[1][0]
    )
