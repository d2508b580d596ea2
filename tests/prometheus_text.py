"""Read single samples out of a /metrics exposition, for before/after comparisons.

The metrics registry lives as long as the process, so a test that counts requests compares
the count before and after its own requests; an absolute value would include whatever other
tests served first.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_value(exposition: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels``; 0.0 when the series does not
    exist yet (a labelled counter appears only once it is first incremented)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0
