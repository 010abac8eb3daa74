"""``cortex replay``: deliver again what was refused, once the cause is fixed."""

from __future__ import annotations

import logging

from cortex.control import KeyOwner
from cortex.enrichment import DEAD_LETTER_PREFIX, Enrichment
from cortex.ingest.fields import parse_timestamp
from cortex.ingest.interactions import ENDPOINT as INTERACTIONS_ENDPOINT, build_interactions
from cortex.ingest.pipeline import BundleError, Timing, build_records
from cortex.queue import Submission
from cortex.sinks import PermanentError

log = logging.getLogger("cortex.replay")


def replay_dead_letters(state, sink_name: str | None = None) -> dict:
    """Write dead-lettered records to their sink again; the ones it now takes are marked
    replayed, the others stay.  Returns counts per sink."""
    result = {"replayed": 0, "failed": 0, "sinks": {}}
    enrichment = None
    for sink in state.make_sinks():
        if sink_name and sink.name != sink_name:
            continue
        letters = state.queue.dead_letters(sink.name)
        if not letters:
            continue
        if enrichment is None and any(letter["error"].startswith(DEAD_LETTER_PREFIX) for letter in letters):
            enrichment = Enrichment.from_state(state)
            enrichment.open()
        letters, still_refused = _enrich_again(enrichment, letters)
        sink.open()
        done, failed = [], still_refused
        try:
            try:
                sink.write([letter["record"] for letter in letters])
                done = [letter["id"] for letter in letters]
            except PermanentError:
                for letter in letters:
                    try:
                        sink.write([letter["record"]])
                        done.append(letter["id"])
                    except PermanentError as error:
                        failed += 1
                        log.error("sink %s still refuses %s: %s", sink.name, letter["record_id"], error)
        finally:
            sink.close()
        state.queue.mark_dead_letters_replayed(done)
        result["sinks"][sink.name] = {"replayed": len(done), "failed": failed}
        result["replayed"] += len(done)
        result["failed"] += failed
    if enrichment is not None:
        enrichment.close()
    return result


def _enrich_again(enrichment, letters: list[dict]) -> tuple[list[dict], int]:
    """Dead letters an enricher refused go through the enrichers again; those that pass are
    returned (with the enriched record) with the others, the ones refused again stay and
    are counted."""
    again = [letter for letter in letters if letter["error"].startswith(DEAD_LETTER_PREFIX)]
    ready = [letter for letter in letters if not letter["error"].startswith(DEAD_LETTER_PREFIX)]
    if not again:
        return ready, 0
    outcomes = enrichment.run([letter["record"] for letter in again])
    refused = 0
    for letter, outcome in zip(again, outcomes):
        if outcome.record is None:
            refused += 1
            log.error("record %s is refused again: %s", letter["record_id"], outcome.dead_reason)
        else:
            ready.append({**letter, "record": outcome.record})
    return ready, refused


def replay_errors(state, org: str | None = None) -> dict:
    """Validate error-logged events again under today's rules and queue those now valid.

    Useful after a fix on the server side (a limit raised, strict mode turned off); events
    still invalid stay in the log.  Dedupe applies, so replaying twice stores nothing twice.
    """
    settings = state.config["ingest"]
    names = state.control.app_names()
    accepted = still_invalid = 0
    replayed_ids = []
    for row in state.queue.ingest_errors(org, include_replayed=False, limit=10**9):
        record = row["record"]
        org_app = names.get(row["app_id"])
        if org_app is None:
            still_invalid += 1
            continue
        owner = KeyOwner(0, org_app[0], org_app[1], row["app_id"], False)
        timing = Timing.parse(
            parse_timestamp(record["received_at"]),
            record.get("current_time"),
            skew_threshold=settings["clock_skew_threshold"],
            future_tolerance=settings["future_tolerance"],
        )
        if record.get("endpoint") == INTERACTIONS_ENDPOINT:
            outcome = build_interactions(
                [record["payload"]], owner, timing, {}, lambda name, o=owner: state.apps.app_id(o.org, name)
            ).outcome
        else:
            bundle = {**record["bundle"], "api_key": "replay"}
            try:
                outcome = build_records(bundle, [record["payload"]], record["endpoint"], owner, timing, {})
            except BundleError:
                still_invalid += 1
                continue
        if not outcome.accepted:
            still_invalid += 1
            continue
        submission = state.queue.submit(Submission(owner.org, owner.app_id, outcome.accepted, [], outcome.shared,
                                                   key_group=outcome.key_group))
        accepted += submission.accepted_count
        replayed_ids.append(row["id"])
    state.queue.mark_errors_replayed(replayed_ids)
    return {"replayed": len(replayed_ids), "accepted": accepted, "still_invalid": still_invalid, "failed": 0}
