"""Build /tmp/proxy/extra.json (run from ../shared/data/knowedit): the WikiBio test texts not in the
train split, and each ConvSent record's responses joined into one paragraph."""

import json

tr = {x["text"] for x in json.load(open("WikiBio/wikibio-train-all.json"))}
te = [x for x in json.load(open("WikiBio/wikibio-test-all.json")) if x["text"] not in tr]
conv = json.load(open("convsent/blender_val.json")) + json.load(open("convsent/blender_test.json"))
paras = [" ".join(s.strip() for s in r["pos"] + r["neg"] if s.strip()) for r in conv]
json.dump({"wikibio_test": [x["text"] for x in te], "conv": paras}, open("/tmp/proxy/extra.json", "w"))
