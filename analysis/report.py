"""The study report: where does pair formation come from, and how does time per epoch grow with N.

The page's assembly: the runs come from analysis.runs (the one loader, MLflow read-only), the sections from
analysis.answer_sections (the questions) and analysis.study_sections (the study itself); each draws what the
runs allow and says in words what it could not draw; a bad or thin experiment never ends in a stack trace.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .answer_sections import section_answers, section_capacity, section_formation, section_predictors, section_scaling
from .document import Document
from .runs import (
    CORE_METRICS,
    add_seed_agreement,
    load_curves,
    load_study_runs,
    most_recent_study,
)
from .store import first_line
from .study_sections import (
    section_assignments,
    section_curves,
    section_glance,
    section_importance,
    section_pairs,
    section_reproduction,
)


class SectionsFailed(RuntimeError):
    """Sections that raised: the page is written without them, each saying why in its place."""

    def __init__(self, out: Path, names: list[str]):
        super().__init__(f"section(s) {', '.join(names)} could not be drawn")
        self.out, self.names = out, names


def build_report(name: str | None, out: Path | None = None, storage: str | None = None, client=None,
                 ui: str | None = None) -> Path:
    """Write reports/<study>/index.html and report.md; returns the folder. Raises nothing for thin data; a
    section that fails (a bug, not thin data) is noted in its place and raises SectionsFailed once the page is
    written. `ui`: the MLflow UI's address (a tracking server's own by default), for links to each run's page."""
    from mlflow.tracking import MlflowClient

    from .store import PROJECT, safe_part, tracking_uri

    client = client or MlflowClient(tracking_uri())
    name = name or most_recent_study(client)
    if name is None:
        name = "no-study"
    out = Path(out or PROJECT / "reports" / safe_part(name))
    doc = Document(f"Study report: {name}", out)
    runs = load_study_runs(client, name)
    runs.ui = ui or (client.tracking_uri if str(client.tracking_uri).startswith(("http://", "https://")) else None)
    if runs.experiment_id is None:
        known = ", ".join(e.name for e in client.search_experiments()) or "none"
        doc.note(f"There is no experiment '{name}' in {client.tracking_uri}. Experiments there: {known}.")
        doc.write()
        return out
    if runs.trials.empty:
        doc.note(f"Experiment '{name}' has no trial runs yet: run the sweep first (make sweep).")
        doc.write()
        return out
    if len(runs.trials) == 1:
        doc.note("This study has one run only: no comparison, interval or fit can be drawn from it.")
    runs.trials = add_seed_agreement(client, runs.trials)
    missing = [m for m in CORE_METRICS if m not in runs.trials]
    if missing:
        doc.note(f"Metrics that no run reports: {', '.join(missing)}.")
    curves = load_curves(client, runs.trials)
    sections = {"answers": lambda: section_answers(doc, runs),
                "glance": lambda: section_glance(doc, runs, client, storage), "pairs": lambda: section_pairs(doc, runs),
                "formation": lambda: section_formation(doc, runs, curves),
                "predictors": lambda: section_predictors(doc, runs),
                "capacity": lambda: section_capacity(doc, runs, client),
                "assignments": lambda: section_assignments(doc, runs, client),
                "importance": lambda: section_importance(doc, runs, storage),
                "scaling": lambda: section_scaling(doc, runs, client),
                "curves": lambda: section_curves(doc, runs, curves),
                "reproduction": lambda: section_reproduction(doc, runs, client)}
    failed = []
    for section, draw in sections.items():
        try:
            draw()
        except Exception as err:  # one broken section must not lose the others
            doc.note(f"This section could not be drawn: {type(err).__name__}: {err}")
            print(f"warning: section {section}: {type(err).__name__}: {first_line(err)}", file=sys.stderr)
            failed.append(section)
    doc.write()
    if failed:
        raise SectionsFailed(out, failed)
    return out
