"""The prompt protocols ``samadapt eval --protocol`` runs besides the box protocol, and their report parts.

``box`` (always run: the report is built around it), ``interactive``
(:mod:`~samadapt.evaluation.interactive_protocol`) and ``robustness``
(:mod:`~samadapt.evaluation.robustness_protocol`). For each model, :func:`run_protocols` runs the chosen
extra protocols on the model's embedding cache; :func:`protocol_report` turns the results of all models into
Markdown sections, CSV tables and a JSON summary; :func:`write_protocol_figures` draws the interactive curves.

Report files added (next to the box protocol's):

    interactive.csv               per model and class: Dice after 1..10 clicks, NoC@85/90, fail@85/90
    interactive_per_object.csv    per model and object: the same, per object
    robustness.csv                per model and class: Dice per behaviour, std, max-min
    robustness_per_object.csv     per model, object and behaviour: Dice
    interactive_curves.png        Dice against clicks, one line per model
    evaluation.json["protocols"]  the summaries above
    slice_results/interactive-<key>.jsonl, robustness-<key>.jsonl
                                  per model: every finished slice's rows (:mod:`~samadapt.evaluation.slice_store`)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from segment_anything.modeling import Sam

from samadapt.data.prepared import PreparedDataset, SliceObject
from samadapt.errors import ConfigError
from samadapt.evaluation.interactive_protocol import (
    InteractiveSettings,
    interactive_estimates,
    interactive_rows,
    interactive_section,
    interactive_summary,
    interactive_table,
    plot_interactive_curves,
)
from samadapt.evaluation.robustness_protocol import (
    ROBUSTNESS_BEHAVIOURS,
    behaviours_identity,
    robustness_estimates,
    robustness_rows,
    robustness_section,
    robustness_summary,
    robustness_table,
)
from samadapt.evaluation.slice_sample import Estimate
from samadapt.evaluation.slice_store import SliceStore
from samadapt.models.embedding_cache import EmbeddingCache
from samadapt.progress import BarFactory, as_progress, no_bars

PROTOCOLS: tuple[str, ...] = ("box", "interactive", "robustness")


def check_protocols(protocols: Iterable[str]) -> tuple[str, ...]:
    """The protocols in report order, ``box`` always included; :class:`ConfigError` for unknown names."""
    names = [p.strip() for p in protocols if p.strip()]
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"--protocol {','.join(names)}: unknown protocol(s) {', '.join(unknown)}; use a "
                          f"comma list of {', '.join(PROTOCOLS)}")
    return tuple(p for p in PROTOCOLS if p in names or p == "box")


def parse_protocols(text: str) -> tuple[str, ...]:
    """``"box,interactive"`` -> ``("box", "interactive")`` (see :func:`check_protocols`)."""
    return check_protocols(text.split(","))


def run_protocols(
    protocols: Iterable[str], sam: Sam, prepared: PreparedDataset, cache: EmbeddingCache, split: str, seed: int,
    label: str, slices: int | None = None, bars: BarFactory = no_bars,
    settings: InteractiveSettings = InteractiveSettings(),
    sample: Sequence[tuple[str, int, list[SliceObject]]] | None = None,
    store_folder: Path | None = None, identity: Mapping | None = None, workers: int = 1,
) -> dict:
    """The extra protocols' results of one model: ``{protocol: {"rows", "summary", "estimates", "store"}}``.

    ``sample``: the slices to score (``(case_id, slice, objects)``; default every slice of ``split`` with
    objects). With ``store_folder``, each protocol's per-slice results go to a
    :class:`~samadapt.evaluation.slice_store.SliceStore` there, keyed by ``identity`` (the model's weights,
    cache, data and split) and the protocol's own settings, so a rerun reads finished slices back.
    ``workers``: processes scoring slices at once.
    """
    results = {}
    base = {**(identity or {}), "split": split}

    def store(protocol: str, own: Mapping) -> SliceStore | None:
        return SliceStore(store_folder, protocol, {**base, **own}) if store_folder is not None else None

    if "interactive" in protocols:
        kept = store("interactive", {"settings": asdict(settings)})
        with bars(f"interactive {label}", slices) as bar:
            rows = interactive_rows(sam, prepared, cache, split, settings, as_progress(bar), slices=sample, store=kept,
                                    workers=workers)
        results["interactive"] = {"rows": rows, "summary": interactive_summary(rows, settings),
                                  "estimates": interactive_estimates(rows, settings), "store": kept}
    if "robustness" in protocols:
        kept = store("robustness", {"seed": seed, "behaviours": behaviours_identity(ROBUSTNESS_BEHAVIOURS)})
        with bars(f"robustness {label}", slices) as bar:
            rows = robustness_rows(sam, prepared, cache, split, seed, progress=as_progress(bar), slices=sample,
                                   store=kept, workers=workers)
        results["robustness"] = {"rows": rows, "summary": robustness_summary(rows),
                                 "estimates": robustness_estimates(rows), "store": kept}
    return results


def protocol_estimates(results: Mapping[str, dict]) -> dict[str, Estimate]:
    """One model's estimates of every extra protocol that ran, named ``<protocol> <estimate>``."""
    return {f"{protocol} {name}": estimate for protocol, r in results.items()
            for name, estimate in r.get("estimates", {}).items()}


def _by_protocol(results: Mapping[str, dict], protocol: str) -> dict[str, dict]:
    return {label: r[protocol] for label, r in results.items() if protocol in r}


REPORT_PARTS = {"interactive": (interactive_section, interactive_table),
                "robustness": (robustness_section, robustness_table)}
"""Per extra protocol: (Markdown section, per-class CSV rows), each from the summaries of every model."""


def protocol_report(results: Mapping[str, dict]) -> tuple[list[str], dict[str, list[dict]], dict]:
    """(Markdown lines, CSV tables by name, JSON summaries) of every model's :func:`run_protocols` results."""
    sections, tables, summaries = [], {}, {}
    for protocol, (section, table) in REPORT_PARTS.items():
        done = _by_protocol(results, protocol)
        if not done:
            continue
        by_model = {label: r["summary"] for label, r in done.items()}
        sections += section(by_model)
        tables[protocol] = table(by_model)
        tables[f"{protocol}_per_object"] = [{"method": label, **row} for label, r in done.items() for row in r["rows"]]
        summaries[protocol] = by_model
    return sections, tables, summaries


def write_protocol_figures(folder: Path, results: Mapping[str, dict]) -> None:
    """``interactive_curves.png`` in ``folder`` when the interactive protocol ran."""
    interactive = _by_protocol(results, "interactive")
    if interactive:
        plot_interactive_curves({label: r["summary"] for label, r in interactive.items()},
                                folder / "interactive_curves.png")
