"""Decode ntt-batch's Label Studio brush tasks with the REAL label-studio-sdk, write what it reads.

Runs in its own virtualenv (label-studio-sdk is not a dependency of ntt-batch), e.g.::

    python3 -m venv /tmp/ls-venv && /tmp/ls-venv/bin/pip install label-studio-sdk==2.1.2
    /tmp/ls-venv/bin/python benchmarks/label_studio_brush_check.py \
        tests/data/label_studio_brush/tasks.json tests/data/label_studio_brush/tasks.label_config.xml \
        tests/data/label_studio_brush/sdk

Input: the tasks file ``ntt-batch export --format label-studio`` wrote (brush predictions) and its
labeling config. Each task's prediction becomes an annotation (what Label Studio stores when a
reviewer accepts a prediction) in a Label Studio JSON export; then:

1. the SDK's own exporter, ``Converter(config).convert(export, out, "BRUSH_TO_PNG")``, writes one
   PNG per region (``brush.decode_from_annotation`` → ``decode_rle``); each is copied to
   ``OUT/png/<region id>.png`` (the converter names files by task, annotation and label, and counts
   regions per label in result order: that order maps them back to region ids);
2. ``OUT/sdk.json`` records, per region, the SDK's ``mask2rle`` of the mask it decoded (the bytes
   the SDK itself would write for that mask), the converter's file name and the SDK version.

``tests/test_label_studio_brush.py`` compares those PNGs pixel for pixel with the masks the tasks
were made from, and our RLE bytes with the SDK's. The committed ``sdk/`` folder is this script's
output for the committed ``tasks.json``; with ``LS_SDK_PYTHON=/tmp/ls-venv/bin/python`` the test
also reruns the script on a fresh export.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from importlib.metadata import version

import numpy as np
from label_studio_sdk.converter import Converter
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image


def main(tasks_path: str, config_path: str, out: str) -> None:
    with open(tasks_path, encoding="utf-8") as f:
        tasks = json.load(f)
    with open(config_path, encoding="utf-8") as f:
        config = f.read()
    export, names = [], {}
    for k, task in enumerate(tasks):
        task_id, ann_id = 1000 + k, 2000 + k
        result = task["predictions"][0]["result"]
        export.append(
            {
                "id": task_id,
                "data": task["data"],
                "annotations": [{"id": ann_id, "completed_by": 1, "result": result, "was_cancelled": False}],
            }
        )
        counters: dict[str, int] = defaultdict(int)
        for r in result:  # the converter's file name for this region (brush.save_brush_images_from_annotation)
            label = r["from_name"] + "-" + "-".join(r["value"]["brushlabels"])
            name = f"{label}-{counters[label]}"
            counters[label] += 1
            names[r["id"]] = f"task-{task_id}-annotation-{ann_id}-by-1-{name}.png"
    os.makedirs(os.path.join(out, "png"), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "export.json")
        with open(src, "w", encoding="utf-8") as f:
            json.dump(export, f)
        conv_out = os.path.join(tmp, "converted")
        os.makedirs(conv_out)  # the converter writes into an existing folder
        Converter(config=config, project_dir=None, download_resources=False).convert(
            src, conv_out, "BRUSH_TO_PNG", is_dir=False
        )
        written = sorted(os.listdir(conv_out))
        expected = sorted(names.values())
        if written != expected:
            sys.exit(
                f"the converter wrote {written[:5]}... ({len(written)}), expected {expected[:5]}... ({len(expected)})"
            )
        for rid, fname in names.items():
            shutil.copyfile(os.path.join(conv_out, fname), os.path.join(out, "png", f"{rid}.png"))
    regions = []
    for task in tasks:
        for r in task["predictions"][0]["result"]:
            h, w = r["original_height"], r["original_width"]
            alpha = np.reshape(decode_rle(r["value"]["rle"]), [h, w, 4])[:, :, 3]
            mask = (alpha > 0).astype(np.uint8) * 255
            regions.append(
                {
                    "id": r["id"],
                    "converter_file": names[r["id"]],
                    "png": f"png/{r['id']}.png",
                    "pixels": int((alpha > 0).sum()),
                    "alpha_values": sorted(int(v) for v in np.unique(alpha)),
                    "sdk_mask2rle": mask2rle(mask),
                }
            )
            png = np.asarray(Image.open(os.path.join(out, "png", f"{r['id']}.png")))
            if not np.array_equal(png, alpha):
                sys.exit(f"region {r['id']}: the converter's PNG differs from decode_rle's alpha channel")
    with open(os.path.join(out, "sdk.json"), "w", encoding="utf-8") as f:
        json.dump({"label_studio_sdk": version("label-studio-sdk"), "regions": regions}, f)
        f.write("\n")
    print(f"{len(regions)} regions decoded by label-studio-sdk {version('label-studio-sdk')} into {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: label_studio_brush_check.py TASKS.json LABEL_CONFIG.xml OUT_FOLDER")
    main(*sys.argv[1:])
