"""Act as a reviewer on a running Label Studio server, through its HTTP API (benchmarks/label_studio_roundtrip.sh).

Runs in Label Studio's own virtualenv (it uses ``requests`` and label-studio-sdk's brush encoder,
``label_studio_sdk.converter.brush.mask2rle``). Steps:

1. create a project with the labeling config ntt-batch's export wrote, plus a ``BrushLabels`` tag
   (same labels) so the reviewer can paint a region;
2. connect Local Storage on ``--image-folder`` (the images the tasks point to) and check that the
   server serves one of them;
3. import the tasks file (``ntt-batch export --format label-studio``) with its predictions;
4. review each task as the key (``label_studio_job.py``) says a careful reviewer would:
   skip (cancelled annotation); or start from the predictions, delete the false ones, change the
   class of the wrongly classed ones, and add the missing objects — one painted with the brush
   (Label Studio RLE), one drawn as a polygon. Task 10764 gets two annotations: a first pass
   that accepts everything, then a corrected one (the latest counts);
5. export the project (``GET /api/projects/<id>/export?exportType=JSON``) to ``--export`` and
   write what the reviewer did to ``--actions``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import uuid

import numpy as np
import requests
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image, ImageDraw


def _rid() -> str:
    return uuid.uuid4().hex[:10]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--image-folder", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--actions", required=True)
    args = ap.parse_args()
    s = requests.Session()
    s.headers["Authorization"] = f"Token {args.token}"
    url = args.url.rstrip("/")

    def call(method: str, path: str, **kw):
        r = s.request(method, url + path, timeout=120, **kw)
        if r.status_code >= 400:
            raise SystemExit(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        print(f"{method} {path}: HTTP {r.status_code}")
        return r

    config = open(args.config).read()
    labels = list(dict.fromkeys(re.findall(r'<Label value="([^"]+)"/>', config)))
    found = re.search(r'<BrushLabels name="([^"]+)"', config)
    brush_name = found.group(1) if found else "brush"
    if not found:  # a polygon-only config: add a brush tag with the same labels so the reviewer can paint
        config = config.replace(
            "</View>",
            f'  <BrushLabels name="{brush_name}" toName="image">\n'
            + "".join(f'    <Label value="{n}"/>\n' for n in labels)
            + "  </BrushLabels>\n</View>",
        )
    found = re.search(r'<PolygonLabels name="([^"]+)"', config)
    poly_name = found.group(1) if found else None
    project = call("POST", "/api/projects", json={"title": "ntt-batch corrections round trip", "label_config": config})
    pid = project.json()["id"]
    print(f"project {pid}: labels {labels} (polygon tag {poly_name!r}, brush tag {brush_name!r})")

    storage = call(
        "POST",
        "/api/storages/localfiles",
        json={"project": pid, "title": "coco_mini", "path": args.image_folder, "use_blob_urls": False},
    ).json()
    print(f"local storage {storage['id']} on {storage['path']}")

    tasks_in = json.load(open(args.tasks))
    imported = call("POST", f"/api/projects/{pid}/import", json=tasks_in).json()
    print(f"imported: {imported.get('task_count')} task(s), {imported.get('prediction_count')} prediction(s)")
    first_image = tasks_in[0]["data"]["image"]
    r = s.get(url + first_image, timeout=60)
    print(f"GET {first_image}: HTTP {r.status_code}, {r.headers.get('Content-Type')}, {len(r.content)} bytes")
    if r.status_code != 200 or not r.headers.get("Content-Type", "").startswith("image/"):
        raise SystemExit("Label Studio does not serve the task's image: check the local storage settings")

    key = json.load(open(args.key))
    tasks = call("GET", f"/api/tasks?project={pid}&page_size=100&fields=all").json()
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    actions = {}
    for t in sorted(tasks, key=lambda t: t["data"]["image_id"]):
        iid = str(t["data"]["image_id"])
        k = key[iid]
        preds = call("GET", f"/api/predictions?task={t['id']}").json()
        preds = preds["results"] if isinstance(preds, dict) else preds
        results = preds[0]["result"]
        act = {"task_id": t["id"], "accepted": [], "deleted": [], "relabelled": [], "added": []}
        if k.get("skip"):
            call("POST", f"/api/tasks/{t['id']}/annotations", json={"result": [], "was_cancelled": True})
            act["skipped"] = True
            actions[iid] = act
            continue
        if k["relabel"]:  # first pass: accept every prediction as it is (superseded below)
            first = [_as_annotation(r) for r in results]
            call("POST", f"/api/tasks/{t['id']}/annotations", json={"result": first, "lead_time": 4.2})
            act["first_pass_regions"] = len(first)
            time.sleep(1.5)
        out = []
        for res in results:
            inst = res["id"].split("_")[1]  # <image id>_<instance>[_<part>]
            if int(inst) in k["false"]:
                if res["id"].count("_") == 1:
                    act["deleted"].append(int(inst))
                continue
            reg = _as_annotation(res)
            if inst in k["relabel"]:
                reg["value"][res["type"]] = [k["relabel"][inst]]
                reg["origin"] = "prediction-changed"
                if res["id"].count("_") == 1:
                    act["relabelled"].append(
                        {"instance": int(inst), "from": res["value"][res["type"]][0], "to": k["relabel"][inst]}
                    )
            elif res["id"].count("_") == 1:
                act["accepted"].append(int(inst))
            out.append(reg)
        for miss in k["missing"]:
            w, h = results[0]["original_width"], results[0]["original_height"]
            if iid == "20992":  # painted with the brush
                canvas = Image.new("L", (w, h), 0)
                draw = ImageDraw.Draw(canvas)
                for poly in miss["polygons"]:
                    draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=255)
                mask = np.array(canvas, dtype=np.uint8)
                out.append(
                    {
                        "id": _rid(),
                        "from_name": brush_name,
                        "to_name": "image",
                        "type": "brushlabels",
                        "origin": "manual",
                        "original_width": w,
                        "original_height": h,
                        "image_rotation": 0,
                        "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": [miss["label"]]},
                    }
                )
                act["added"].append({"label": miss["label"], "kind": "brush", "pixels": int((mask > 0).sum())})
            elif poly_name is None:
                raise SystemExit("the labeling config has no PolygonLabels tag to draw the missed polygon with")
            else:  # drawn as a polygon (its largest part)
                poly = max(miss["polygons"], key=len)
                pts = [[round(x * 100.0 / w, 4), round(y * 100.0 / h, 4)] for x, y in zip(poly[0::2], poly[1::2])]
                out.append(
                    {
                        "id": _rid(),
                        "from_name": poly_name,
                        "to_name": "image",
                        "type": "polygonlabels",
                        "origin": "manual",
                        "original_width": w,
                        "original_height": h,
                        "image_rotation": 0,
                        "value": {"points": pts, "closed": True, "polygonlabels": [miss["label"]]},
                    }
                )
                act["added"].append({"label": miss["label"], "kind": "polygon", "points": len(pts)})
        call("POST", f"/api/tasks/{t['id']}/annotations", json={"result": out, "lead_time": 21.0})
        actions[iid] = act

    export = call("GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true").json()
    with open(args.export, "w") as f:
        json.dump(export, f, indent=1)
        f.write("\n")
    with open(args.actions, "w") as f:
        json.dump(actions, f, indent=1)
        f.write("\n")
    n_ann = sum(len(t.get("annotations") or []) for t in export)
    print(f"exported {len(export)} task(s) with {n_ann} annotation(s) to {args.export}")


def _as_annotation(res: dict) -> dict:
    """A prediction region taken over as it is (what 'accept' does in the editor)."""
    reg = {k: v for k, v in res.items() if k != "score"}
    reg["value"] = json.loads(json.dumps(res["value"]))
    reg["origin"] = "prediction"
    return reg


if __name__ == "__main__":
    main()
