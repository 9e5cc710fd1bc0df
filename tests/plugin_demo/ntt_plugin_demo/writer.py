"""An export format: one tab-separated line per exported image (id, instance count, class names)."""

from __future__ import annotations

import os

from ntt_batch.exports.base import Writer


class DemoWriter(Writer):
    format = "demo-writer"

    def __init__(self, out, ctx, **options):
        super().__init__(out, ctx, **options)
        self._tmp = f"{out}.partial"
        self._f = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()/abort()
        self._f.write("image_id\tinstances\tclasses\n")

    def write(self, row) -> int:
        names = [self.ctx.category_name(i["category_id"], i["category_name"]) for i in row.instances()]
        self._f.write(f"{row.image_id}\t{len(names)}\t{','.join(sorted(set(names)))}\n")
        return len(names)

    def close(self) -> None:
        self._f.close()
        os.replace(self._tmp, self.out)

    def abort(self) -> None:
        self._f.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
