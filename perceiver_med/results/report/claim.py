"""The CLAIM 2024 checklist (Tejani et al., Radiology: Artificial Intelligence 2024;6(4):e240300), its 44 items
in brief paraphrase, as an appendix that marks which items the report fills and where.

The wording here is ours and short; authors should check each item against the published checklist.
"""
from __future__ import annotations

from perceiver_med.results.report.document import PLACEHOLDER, Cell, Table

ITEMS = (
    (1, "Title/abstract", "Title or abstract names the study as AI, with the kind of technique"),
    (2, "Title/abstract", "Structured summary of design, methods, results and conclusions"),
    (3, "Introduction", "Scientific and clinical background; intended use and role of the AI"),
    (4, "Introduction", "Aims, objectives and (unless data-driven) hypotheses"),
    (5, "Methods: design", "Prospective or retrospective"),
    (6, "Methods: design", "Study goal (model creation, feasibility, non-inferiority, ...)"),
    (7, "Methods: data", "Data sources"),
    (8, "Methods: data", "Inclusion and exclusion criteria"),
    (9, "Methods: data", "Preprocessing of the data"),
    (10, "Methods: data", "How any subsets of the data were selected"),
    (11, "Methods: data", "De-identification"),
    (12, "Methods: data", "Handling of missing data"),
    (13, "Methods: data", "Image acquisition protocol"),
    (14, "Methods: reference standard", "How the reference standard was obtained"),
    (15, "Methods: reference standard", "Why this reference standard"),
    (16, "Methods: reference standard", "Who annotated, with what qualifications and preparation"),
    (17, "Methods: reference standard", "How the test set was annotated (instructions, tools, versions)"),
    (18, "Methods: reference standard", "Inter- and intra-rater variability of the annotations"),
    (19, "Methods: partitions", "How data were assigned to partitions"),
    (20, "Methods: partitions", "Level at which partitions are disjoint (patient, series, image)"),
    (21, "Methods: testing data", "Intended sample size and how it was decided"),
    (22, "Methods: model", "Detailed description of the model"),
    (23, "Methods: model", "Software libraries, frameworks and packages, with versions"),
    (24, "Methods: model", "Initialisation of model parameters"),
    (25, "Methods: training", "Training approach in enough detail to replicate"),
    (26, "Methods: training", "How the final model was selected"),
    (27, "Methods: training", "Ensembling, if used"),
    (28, "Methods: evaluation", "Performance metrics and why they suit the task"),
    (29, "Methods: evaluation", "Statistical measures of significance and uncertainty"),
    (30, "Methods: evaluation", "Robustness or sensitivity analysis"),
    (31, "Methods: evaluation", "Explainability methods, their parameters, and how they were validated"),
    (32, "Methods: evaluation", "Evaluation on internal data"),
    (33, "Methods: evaluation", "Testing on external data"),
    (34, "Methods: evaluation", "Clinical trial registration, where it applies"),
    (35, "Results: data", "Numbers of patients or examinations included and excluded (flow diagram)"),
    (36, "Results: data", "Demographic and clinical characteristics per partition"),
    (37, "Results: performance", "Performance metrics with their statistical uncertainty"),
    (38, "Results: performance", "Diagnostic performance estimates and their precision"),
    (39, "Results: performance", "Failure analysis of incorrect results"),
    (40, "Discussion", "Limitations, including bias and generalisability"),
    (41, "Discussion", "Implications for practice, intended use and clinical role"),
    (42, "Other", "Reference to the full protocol or further technical details"),
    (43, "Other", "Availability of software, trained model and data"),
    (44, "Other", "Funding and other support; the funders' role"),
)


def checklist_table(filled: dict[int, tuple[str, str]]) -> Table:
    """One row per item: where the report fills it (`filled[item] = (section title, what)`), else PLACEHOLDER."""
    rows = []
    for number, section, text in ITEMS:
        where = filled.get(number)
        status = Cell("filled" if where else "not filled", f"claim-{number}")
        rows.append([str(number), section, text, status, f"{where[0]}: {where[1]}" if where else PLACEHOLDER])
    return Table(["item", "section", "what it asks (paraphrased)", "this report", "where, or what is left"], rows,
                 f"{sum(n in filled for n, _, _ in ITEMS)} of {len(ITEMS)} items filled, at least in part, by "
                 "this report")
