"""Commit intents: publishing new parts in place of old ones as one recoverable step, and recovery.

The steps, and what recovery does with an intent a crashed run left, are described in
``output.parts``' module docstring (steps 2-6 happen here).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from .crashpoints import crash_point
from .folder import COMMITS, REPLACED, TMP, OutputFolder, utc_now_iso

RunUpdater = Callable[[Callable[[dict], None]], None]


def _no_check() -> None:
    return None


def _visible(folder: OutputFolder, path: str) -> bool:
    """Whether a file is in the dataset readers see (directly under the output, not under ``_ntt/``)."""
    return path.rsplit("/", 1)[0] == folder.root


def commit(
    folder: OutputFolder,
    new_parts: list,  # output.parts.NewPart (name, tmp_path, stats)
    replaced: list[str],
    update_run: RunUpdater,
    *,
    kind: str,
    before_publish: Callable[[], None] | None = None,
) -> None:
    """Publish ``new_parts`` in place of ``replaced`` (paths) as one recoverable step (see ``output.parts``).

    ``kind``: ``staging``, ``compaction``, ``retry-errors`` or ``repair`` (the intent records it, and
    it names the crash points). ``update_run(fn)`` applies ``fn(run_dict)`` to run.json under the
    caller's lock and writes it. ``before_publish`` (the lease's ``check``) runs before the intent
    is written and before every file move: a run that lost its lease moves nothing more.

    A failure after the intent is written leaves it for :func:`recover_commits` (the next lease
    holder finishes or undoes it); nothing is undone here, because a run that lost its lease must
    not touch files the new holder may already have recovered.
    """
    if not new_parts and not replaced:
        return
    check = before_publish or _no_check
    crash_point(f"{kind}.assembled")
    check()
    intent_id = f"{utc_now_iso().replace(':', '')}-{uuid.uuid4().hex[:8]}"
    intent = {
        "id": intent_id,
        "kind": kind,
        "created_at": utc_now_iso(),
        "parts": [{"name": p.name, "tmp": p.tmp_path, "stats": p.stats.to_dict()} for p in new_parts],
        "replaced": [
            {
                "path": r,
                "hold": folder.path(f"{REPLACED}/{intent_id}/{r.rsplit('/', 1)[-1]}") if _visible(folder, r) else None,
            }
            for r in replaced
        ],
    }
    folder.write_json(f"{COMMITS}/{intent_id}.json", intent)
    crash_point(f"{kind}.intent")
    _finish(folder, intent, update_run, step=kind, check=check)


def _normalise(intent: dict) -> dict:
    """Intents of older versions list replaced files as plain paths (deleted after publishing)."""
    intent["replaced"] = [r if isinstance(r, dict) else {"path": r, "hold": None} for r in intent.get("replaced", [])]
    intent.setdefault("parts", [])
    return intent


def _exists(folder: OutputFolder, path: str) -> bool:
    return bool(path) and folder.fs.exists(path)


def _finish(
    folder: OutputFolder, intent: dict, update_run: RunUpdater, *, step: str, check: Callable[[], None]
) -> None:
    """Steps 3-6 (``output.parts``' module docstring); every step is idempotent, so recovery can repeat any of them."""
    folder.fs.invalidate_cache()
    held = [r for r in intent["replaced"] if r["hold"]]
    to_retire = [r for r in held if _exists(folder, r["path"])]
    for i, r in enumerate(to_retire):
        check()  # before every move: a holder frozen between two moves stops at the next one
        folder.move(r["path"], r["hold"])
        if i == 0:
            crash_point(f"{step}.retiring")
    if held:
        crash_point(f"{step}.retired")
    to_publish = [p for p in intent["parts"] if _exists(folder, p["tmp"])]
    for i, p in enumerate(to_publish):
        check()
        folder.move(p["tmp"], folder.path(p["name"]))
        if i == 0:
            crash_point(f"{step}.publishing")
    if intent["parts"]:
        crash_point(f"{step}.published")
    infos = {p["name"]: folder.info(folder.path(p["name"])) for p in intent["parts"]}
    replaced_names = {r["path"].rsplit("/", 1)[-1] for r in intent["replaced"]}

    def apply(run: dict) -> None:
        parts = run.setdefault("parts", {})
        for name in replaced_names:
            parts.pop(name, None)
        for p in intent["parts"]:
            info = infos[p["name"]]
            stats = dict(p["stats"])
            if info is not None:
                stats["bytes"], stats["version"] = info.size, info.version
            parts[p["name"]] = stats

    update_run(apply)
    crash_point(f"{step}.recorded")
    for r in intent["replaced"]:
        folder.remove(r["hold"] or r["path"])
    folder.remove(folder.path(f"{COMMITS}/{intent['id']}.json"))
    folder.remove_empty_dir(f"{REPLACED}/{intent['id']}")


def _undo(folder: OutputFolder, intent: dict, check: Callable[[], None]) -> None:
    """Undo an intent whose new parts are not all there: new parts leave the dataset first, then the
    replaced parts move back (never two copies visible); staged sources were never moved."""
    folder.fs.invalidate_cache()
    check()
    for p in intent["parts"]:
        folder.remove(folder.path(p["name"]))
    crash_point("recovery.unpublished")
    restored = 0
    for r in intent["replaced"]:
        if not r["hold"] or not _exists(folder, r["hold"]):
            continue
        check()
        if _exists(folder, r["path"]):  # an object-store move copied but had not deleted yet
            folder.remove(r["hold"])
            continue
        folder.move(r["hold"], r["path"])
        restored += 1
        if restored == 1:
            crash_point("recovery.restoring")
    for p in intent["parts"]:
        folder.remove(p["tmp"])
    folder.remove(folder.path(f"{COMMITS}/{intent['id']}.json"))
    folder.remove_empty_dir(f"{REPLACED}/{intent['id']}")


def recover_commits(
    folder: OutputFolder, update_run: RunUpdater, *, check: Callable[[], None] | None = None
) -> list[str]:
    """Finish or undo the commits a crashed run left half done; returns notes for run.json.

    ``check``: the lease's check (before anything moves). Also removes what no intent refers to:
    parts assembled under ``_ntt/tmp/`` before their intent was written, and emptied ``_ntt/replaced/``
    folders.
    """
    check = check or _no_check
    notes = []
    folder.fs.invalidate_cache()
    for f in folder.files_under(COMMITS, ".json"):
        intent = folder.read_json(f.path[len(folder.root) + 1 :])
        if not intent:
            folder.remove(f.path)
            continue
        intent = _normalise(intent)
        # the temporary path first: an object-store publish copies, then deletes it
        complete = all(_exists(folder, p["tmp"]) or _exists(folder, folder.path(p["name"])) for p in intent["parts"])
        if complete:
            _finish(folder, intent, update_run, step="recovery", check=check)
            notes.append(
                f"finished an interrupted {intent.get('kind')} commit {intent['id']} ({len(intent['parts'])} part(s))"
            )
        else:
            _undo(folder, intent, check)
            notes.append(f"undid an interrupted {intent.get('kind')} commit {intent['id']} (its sources are intact)")
    folder.rmdir_tree(TMP)
    if not folder.files_under(COMMITS, ".json"):
        folder.rmdir_tree(REPLACED)
    return notes
