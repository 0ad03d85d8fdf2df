"""stream/pipeline/stats.py: the percentile summary every report uses."""

from __future__ import annotations

import numpy as np

from stream.pipeline.stats import STATS, summary_ms


def test_summary_is_the_percentiles_and_the_maximum_rounded_to_the_microsecond():
    values = np.arange(1, 1001) / 7  # 0.142857... to 142.857... ms
    s = summary_ms(values)
    assert tuple(s) == STATS
    assert s["p50"] == round(float(np.percentile(values, 50)), 3) == 71.5
    assert s["p90"] == round(float(np.percentile(values, 90)), 3)
    assert s["p99"] == round(float(np.percentile(values, 99)), 3)
    assert s["max"] == 142.857
    assert all(type(v) is float for v in s.values())  # plain floats: JSON as is


def test_no_values_give_none_for_each_statistic():
    assert summary_ms([]) == {"p50": None, "p90": None, "p99": None, "max": None}
    assert summary_ms(np.array([], dtype=np.int64)) == dict.fromkeys(STATS)
