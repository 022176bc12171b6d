"""Duplicates and screening: dedup, screen (and the check `add --check` prints)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from ..types import line_uri, shown_uri
from .base import COLLECTION_HELP, Decimal, cli, collection_path, runtime_options

TIER_HELP = ("exact: the same bytes or pixels; near: edited copies (re-encoded, resized, "
             "cropped, recoloured...); similar: the same scene or burst (reported, never acted "
             "on). Each tier includes the closer ones")
PRESET_HELP = ("Calibrated near-copy threshold of the collection's model: strict, normal, loose "
               "(their measured precision and recall are in the README) [default normal].")
THRESHOLD_HELP = "Near-copy threshold: a cosine of two images' embeddings, instead of a preset."


def threshold_options(func: Any) -> Any:
    func = click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
                        help=THRESHOLD_HELP)(func)
    return click.option("--preset", type=click.Choice(["strict", "normal", "loose"]),
                        default=None, help=PRESET_HELP)(func)


@cli.command("dedup")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--tier", type=click.Choice(["exact", "near", "similar"]), default="near",
              show_default=True, help=TIER_HELP + ".")
@threshold_options
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Confirm near copies on their pixels (reads the files of close pairs; "
                   "--no-verify: the embeddings alone, faster, far less precise).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes that check pixels [default: one per CPU].")
@click.option("--max-group", type=Decimal(2, 100_000), default=50, show_default=True,
              help="Most images in one group.")
@click.option("--prefer", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Keep copies in this folder first (repeat: earlier folders first).")
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print one CSV row per image in a group.")
@click.option("--action", type=click.Choice(["quarantine", "hardlink", "remove"]), default=None,
              help="What to do with the copies not kept: move them to --to DIR keeping their "
                   "relative paths; replace exact copies by hard links to the kept one; or "
                   "remove them from the collection (files untouched). A dry run unless "
                   "--apply.")
@click.option("--to", "to", type=click.Path(file_okay=False), default=None,
              help="Quarantine folder for --action quarantine.")
@click.option("--apply", is_flag=True, help="Carry out --action (and write an undo manifest).")
@click.option("--undo", "undo_manifest", type=click.Path(dir_okay=False, exists=True),
              default=None, help="Undo the action of this manifest, then stop.")
@click.option("--distinct", nargs=2, multiple=True, metavar="A B",
              help="Record that images A and B (ids or paths) are not duplicates, then stop; "
                   "kept by content, through re-indexing, renames and moves.")
@click.option("--forget", nargs=2, multiple=True, metavar="A B",
              help="Forget any decision on images A and B, then stop.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: on a terminal, for 20,000 images or more].")
def dedup_command(collection: str | None, tier: str, preset: str | None,
                  threshold: float | None, verify: bool, workers: int | None, max_group: int,
                  prefer: Sequence[str],
                  as_json: bool, as_csv: bool, action: str | None, to: str | None, apply: bool,
                  undo_manifest: str | None, distinct: Sequence[tuple[str, str]],
                  forget: Sequence[tuple[str, str]], progress: bool | None) -> None:
    """Find the collection's duplicates, in groups around the copy to keep.

    Every member of a group passes the threshold against the group's first image (the copy
    suggested to keep, and why), so a run of look-alikes never chains unrelated images
    together. Pairs you marked --distinct never group again.

    \b
    Report:      lookalike dedup -c photos.lookalike
    Copies too:  lookalike dedup --tier similar --csv > similar.csv
    Dry run:     lookalike dedup --action quarantine --to ~/dupes
    Do it:       lookalike dedup --action quarantine --to ~/dupes --apply
    Undo:        lookalike dedup --undo ~/dupes/lookalike-undo-quarantine-20261206-120000.json
    Not dupes:   lookalike dedup --distinct 17 42
    """
    from ..collection import Collection
    from ..dedup import find_duplicates
    from ..dedup.actions import act

    if as_json and as_csv:
        raise click.UsageError("Give --json or --csv, not both.")
    if apply and action is None:
        raise click.UsageError("--apply carries out an --action: name one.")
    if to is not None and action != "quarantine":
        raise click.UsageError("--to DIR is where --action quarantine moves the copies; it "
                               "goes with that action only.")
    if action == "quarantine" and to is None:
        raise click.UsageError("--action quarantine needs --to DIR, the folder to move the "
                               "copies to.")
    if undo_manifest:
        _undo(collection, undo_manifest)
        return
    with Collection.open(collection_path(collection)) as col:
        if distinct or forget:
            _decide(col, distinct, forget)
            return
        report = find_duplicates(col, tier=tier, preset=preset, threshold=threshold,
                                 verify=verify, workers=workers, max_group=max_group,
                                 prefer=prefer, show_progress=progress)
        acted = act(col, report.groups, action, to=to, apply=apply) if action else None
    if as_json:
        click.echo(json.dumps({**report.to_dict(),
                               "action": acted.to_dict() if acted else None}, indent=2))
    elif as_csv:
        _write_csv(report)
    else:
        _echo_groups(report)
    if acted and not as_json:
        _echo_action(acted, err=as_csv)  # the CSV on stdout stays one table


def _undo(collection: str | None, manifest: str) -> None:
    """Undo into the collection the manifest names (refusing another one given with -c)."""
    from ..collection import Collection
    from ..dedup.actions import manifest_collection, undo

    recorded = manifest_collection(manifest)
    if collection is not None and os.path.abspath(collection_path(collection)) != recorded:
        raise click.UsageError(f"{manifest} undoes an action on the collection {recorded}, not "
                               f"{collection}: leave out -c.")
    with Collection.open(recorded) as col:
        undone = undo(col, manifest)
    for path in undone.restored:
        click.echo(f"restored  {line_uri(path)}")
    for path, why in undone.skipped:
        click.echo(f"skipped   {line_uri(path)}: {why}")
    click.echo(f"Undone in {recorded}: {len(undone.restored)} restored, "
               f"{len(undone.skipped)} skipped.")
    if undone.skipped:
        raise click.exceptions.Exit(1)


def _decide(col: Any, distinct: Sequence[tuple[str, str]],
            forget: Sequence[tuple[str, str]]) -> None:
    from ..dedup import decide

    for a, b in [*distinct, *forget]:
        first, second = _image(col, a), _image(col, b)
        same = col.store.get([first, second])
        if len(same) == 2 and same[first].content_hash == same[second].content_hash:
            raise click.UsageError(f"{a} and {b} have the same bytes: identical files are "
                                   "always exact duplicates.")
        decide(col, [first, second], "distinct" if (a, b) in distinct else None)
    click.echo(f"Recorded {len(distinct)} 'not duplicates' decision(s); cleared any decision "
               f"on {len(forget)} pair(s).")


def _image(col: Any, value: str) -> int:
    if value.isdigit():
        return int(value)
    found = col.find(value)
    if found is None:
        raise click.BadParameter(f"{value} is neither an indexed image's path nor an id.")
    return int(found)


def _echo_groups(report: Any) -> None:
    for n, group in enumerate(report.groups, 1):
        click.echo(f"Group {n}: {group.tier}, {len(group.members) + 1} images, weakest link "
                   f"{group.weakest:.3f}")
        keep = group.keep
        click.echo(f"  keep     {keep.image_id:>8}  {line_uri(keep.uri)}  ({group.reason})")
        for m in group.members:
            how = f" {m.how}" if m.how else f" {m.cosine:.3f}"
            click.echo(f"  {m.tier:<7}{how:>12}  {m.image_id:>8}  {line_uri(m.uri)}")
    t = report.thresholds
    copies = sum(len(g.members) for g in report.groups)
    rule = "the same bytes or pixels"
    if report.tier != "exact":
        checked = (f" and pixels that align (>= {t.near.aligned:.2f}, detail >= "
                   f"{t.near.detail:.2f})" if t.near.verified else " (pixel check off)")
        measured = (f", preset {t.preset}: precision {t.near.precision:.3f}, recall "
                    f"{t.near.recall:.3f} on self-made copies"
                    if t.preset and t.near.precision is not None else "")
        rule = f"near copies: cosine >= {t.near.threshold:.3f}{checked}{measured}"
        if report.tier == "similar":
            rule += f"; similar: cosine >= {t.similar.threshold:.3f}, not a near copy"
    click.echo(f"{len(report.groups)} groups, {copies} copies, among {report.images:,} images "
               f"in {report.seconds:.1f} s. {rule[0].upper()}{rule[1:]}.")


def _write_csv(report: Any) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["group", "role", "id", "uri", "tier", "how", "cosine", "width", "height",
                     "size", "reason"])
    for n, group in enumerate(report.groups, 1):
        k = group.keep
        writer.writerow([n, "keep", k.image_id, shown_uri(k.uri), "", "", "", k.width, k.height,
                         k.size, group.reason])
        for m in group.members:
            writer.writerow([n, "copy", m.image_id, shown_uri(m.uri), m.tier, m.how,
                             f"{m.cosine:.4f}", m.width, m.height, m.size, ""])


def _echo_action(acted: Any, *, err: bool = False) -> None:
    verb = {"quarantine": "moved", "hardlink": "linked", "remove": "removed"}[acted.action]
    for step in acted.steps:
        if step.skipped:
            click.echo(f"skipped   {line_uri(step.uri)}: {step.skipped}", err=err)
        elif not acted.applied:
            where = f" -> {line_uri(step.target)}" if step.target else ""
            click.echo(f"would {acted.action}  {line_uri(step.uri)}{where}", err=err)
        elif step.done:
            click.echo(f"{verb:<9} {line_uri(step.uri)}", err=err)
    todo = [s for s in acted.steps if not s.skipped]
    if not todo:
        click.echo(f"Nothing to {acted.action}: {len(acted.steps)} copies skipped.", err=err)
    elif not acted.applied:
        click.echo(f"Dry run: {len(todo)} copies to {acted.action}, "
                   f"{len(acted.steps) - len(todo)} skipped. Add --apply to do it.", err=err)
    else:
        click.echo(f"Done: {len(acted.acted)} {verb}, {len(acted.steps) - len(acted.acted)} "
                   f"skipped. Undo: lookalike dedup --undo {acted.manifest}", err=err)


@cli.command("screen")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--against", "watchlist", required=True,
              help="The watchlist: a collection folder (its store may be on another machine).")
@click.option("--tier", type=click.Choice(["exact", "near", "similar"]), default="near",
              show_default=True,
              help="The loosest tier that counts as a match: exact (the same bytes or pixels), "
                   "near (an edited copy), similar (the same scene: catches more, such as "
                   "captioned copies the pixel check misses, and more false matches).")
@threshold_options
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--fail-on-match", is_flag=True,
              help="Exit with status 3 if any image matched (else 1 if any could not be read).")
@runtime_options
def screen_command(paths: Sequence[str], watchlist: str, tier: str, preset: str | None,
                   threshold: float | None, as_json: bool, fail_on_match: bool,
                   **runtime: Any) -> None:
    """Screen images (files or folders) against a watchlist collection: each image's closest
    watchlist image that passes the threshold.

    \b
    Example:  lookalike screen uploads/ --against banned.lookalike --fail-on-match
    """
    from ..collection import Collection
    from ..dedup import thresholds_for
    from ..dedup.matching import screen

    watchlist = os.path.abspath(os.path.expanduser(watchlist))
    with Collection.open(watchlist, **runtime) as col:
        thresholds = thresholds_for(col.model_name, preset=preset, threshold=threshold)
        results = screen(col, list(paths), thresholds, tier=tier)
    matched = [r for r in results if r.match]
    failed = [r for r in results if r.error]
    if as_json:
        click.echo(json.dumps({"watchlist": watchlist, "tier": tier,
                               "threshold": thresholds.floor(tier),
                               "results": [r.to_dict() for r in results]}, indent=2))
    else:
        for r in results:
            if r.error:
                click.echo(f"error  {line_uri(r.source)}: {r.error}")
            elif r.match:
                m = r.match
                click.echo(f"MATCH  {line_uri(r.source)}  {m.tier} {m.cosine:.3f}  "
                           f"{m.image_id} {line_uri(m.uri)}")
            else:
                click.echo(f"clear  {line_uri(r.source)}")
        unread = f"; {len(failed)} could not be read" if failed else ""
        click.echo(f"{len(matched)} of {len(results)} images matched the watchlist{unread}.",
                   err=True)
    if fail_on_match and matched:
        raise click.exceptions.Exit(3)
    if failed:  # an image that could not be screened is never reported as clear
        raise click.exceptions.Exit(1)
