"""The connections table and chart: rows in order with signed weights, labels where given, and a
feature with nothing on either side."""

from __future__ import annotations

from diffract_core.attribution.connections import Connection, FeatureConnections
from diffract_core.features import FeatureRef
from diffract_core.render.connections import format_connections, render_connections

FEATURE = FeatureRef("img", 2, 17)


def _connections() -> FeatureConnections:
    return FeatureConnections(FEATURE, 0.5, [Connection(FeatureRef("img", 0, 3), FEATURE, -0.25)],
                              [Connection(FEATURE, FeatureRef("img", 3, 9), 0.125),
                               Connection(FEATURE, FeatureRef("img", 5, 1), -0.0625)])


def test_the_table_lists_upstream_then_downstream_with_labels_where_known() -> None:
    lines = format_connections(_connections(), {"img:3:9": "red circle"}).splitlines()
    assert lines[0] == "virtual weights of img:2:17 at sigma 0.5 (per unit activation, LayerNorm factor 1)"
    assert [line.split() for line in lines[3:]] == [
        ["upstream", "img:0:3", "-0.25", "-"],
        ["downstream", "img:3:9", "+0.125", "red", "circle"],
        ["downstream", "img:5:1", "-0.0625", "-"],
    ]
    assert "label" not in format_connections(_connections()).splitlines()[1]


def test_the_chart_draws_a_bar_per_connection_and_copes_with_none() -> None:
    chart = render_connections(_connections(), {"img:2:17": "a shape"})
    empty = render_connections(FeatureConnections(FEATURE, 0.5, [], []))
    assert chart.shape[1:] == (720, 3) and chart.shape[0] > empty.shape[0]
    blue, red = (40, 90, 200), (210, 60, 50)
    pixels = (chart * 255).round().reshape(-1, 3)
    for colour in (blue, red):
        assert bool(((pixels - chart.new_tensor(colour)).abs().sum(-1) == 0).any())
    assert format_connections(FeatureConnections(FEATURE, 0.5, [], [])).endswith(
        "(no transcoder of this stream before or after this layer)")
