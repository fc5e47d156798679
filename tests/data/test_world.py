import math

import numpy as np
import pytest

from opal.data.world import REGIONS, World, build_world, cell_table, region_by_name
from opal.errors import BadInputError


def test_region_table_is_consistent():
    assert len(REGIONS) == 12
    assert [r.id for r in REGIONS] == list(range(1, 13))
    assert len({r.name for r in REGIONS}) == 12
    assert math.isclose(sum(r.weight for r in REGIONS), 1.0)
    assert all(r.cells >= 4 for r in REGIONS)


def test_cells_belong_to_exactly_one_region():
    cells = cell_table()
    ids = [c["cell_id"] for c in cells]
    assert len(ids) == len(set(ids)) == sum(r.cells for r in REGIONS)
    assert ids == list(World.cell_ids())
    assert [REGIONS[i].name for i in World.cell_region()] == [c["region"] for c in cells]


def test_unknown_region_names_the_known_ones():
    assert region_by_name("Cendra").id == 3
    with pytest.raises(BadInputError, match="expected one of Amara, Belcora"):
        region_by_name("Nowhere")


def test_world_is_seeded_and_plausible():
    a = build_world(subscribers=20_000, seed=5)
    b = build_world(subscribers=20_000, seed=5)
    assert np.array_equal(a.msisdn, b.msisdn) and np.array_equal(a.work_cell, b.work_cell)
    assert len(np.unique(a.msisdn)) == 20_000
    share = np.bincount(a.home_region, minlength=12) / 20_000
    assert np.allclose(share, [r.weight for r in REGIONS], atol=0.015)
    assert 0.7 < (a.home_region == a.work_region).mean() < 0.85
    assert (World.cell_region()[a.home_cell] == a.home_region).all()
    assert (World.cell_region()[a.work_cell] == a.work_region).all()
    assert 0.9 < a.activity.mean() < 1.1


def test_displacement_destinations_are_skewed():
    for origin in range(len(REGIONS)):
        w = World.destination_weights(origin)
        assert w[origin] == 0 and math.isclose(w.sum(), 1.0)
        assert np.sort(w)[-1] > 0.4
