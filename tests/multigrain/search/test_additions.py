from multigrain.search import additions


def test_an_addition_is_resumed_for_the_same_images_and_replaced_for_others():
    manifest = {"shards": additions.plan_shards(5, 2)}
    assert [(s["stem"], s["first"], s["images"]) for s in manifest["shards"]] == [
        ("descriptors-00000", 0, 2),
        ("descriptors-00001", 2, 2),
        ("descriptors-00002", 4, 1),
    ]
    first = additions.Addition(["p/x.jpg", "p/y.jpg", "p/z.jpg"], ["x.jpg", "y.jpg", "z.jpg"], [])
    shards, replaced = additions.begin_addition(manifest, first, 2)
    assert [s["stem"] for s in shards] == ["descriptors-00003", "descriptors-00004"] and replaced == []
    shards[0]["complete"] = True
    again, replaced = additions.begin_addition(manifest, first, 5)
    assert again is shards and replaced == []  # the same images: the unfinished addition goes on, its shards kept

    other = additions.Addition(["p/x.jpg"], ["x.jpg"], [])
    shards, replaced = additions.begin_addition(manifest, other, 2)
    assert replaced == ["descriptors-00003", "descriptors-00004"]
    assert [(s["stem"], s["complete"]) for s in shards] == [("descriptors-00003", False)]

    shards[0].update(complete=True, descriptors=1)
    additions.finish_addition(manifest)
    assert "adding" not in manifest and [s["stem"] for s in manifest["shards"]][-1] == "descriptors-00003"
    (record,) = manifest["additions"]
    assert (record["images"], record["descriptors"], record["shards"]) == (1, 1, ["descriptors-00003"])
    assert record["started"] <= record["finished"]
