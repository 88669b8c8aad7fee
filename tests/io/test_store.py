"""The image store returns what was asked, in the order asked."""

from __future__ import annotations

from curate.io.store import ImageStore
from curate.table import read_table


def test_images_come_back_in_the_order_asked(photos_run_template):
    table = read_table(photos_run_template).filter(
        read_table(photos_run_template)["status"] == "ok"
    )
    ids = table["sample_id"].to_list()[:6]
    store = ImageStore(photos_run_template)
    forward = [img.size for img in store.get(ids)]
    backward = [img.size for img in store.get(ids[::-1])]
    assert backward == forward[::-1]
    sizes = dict(
        zip(table["sample_id"], zip(table["width"], table["height"], strict=True), strict=True)
    )
    assert forward == [sizes[i] for i in ids]
    assert len(set(forward)) > 1  # the check means something: the sizes differ
