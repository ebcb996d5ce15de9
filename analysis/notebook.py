"""notebook.ipynb: the report's analysis as a Jupyter notebook, one section per cell pair, making
the same calls with the same seed so its numbers equal summary.json's."""

import nbformat
from nbformat import v4

from analysis import documents


def _cells(export_dir: str, reference_arm: str, seed: int, include_pilot: bool, n_boot: int):
    md, code = v4.new_markdown_cell, v4.new_code_cell
    return [
        md(
            "# Study analysis\n\n"
            "Reproduces `report.html` / `summary.json` step by step. Run it from the repository "
            "root (or with it on `PYTHONPATH`) so that `import analysis` works; every number "
            "below equals the report's for the same export, seed and settings."
        ),
        code(
            "from pathlib import Path\n\n"
            "import pandas as pd\n\n"
            "from analysis import documents, power, stats, trajectories\n"
            "from analysis.io import has_table, load_export\n"
            "from analysis.report import prepare\n"
            "from analysis.sections import ALPHA, LEVEL, SHARE_THRESHOLDS, TARGET_POWER\n\n"
            f"EXPORT_DIR = Path({export_dir!r})\n"
            f"REFERENCE_ARM = {reference_arm!r}\n"
            f"SEED = {seed!r}\n"
            f"N_BOOT = {n_boot!r}\n"
            f"INCLUDE_PILOT = {include_pilot!r}\n"
            "BOOT = {'seed': SEED, 'n_boot': N_BOOT}"
        ),
        md(
            "## Load the export and apply exclusions\n\n"
            "Participants and turn ratings, and messages and document versions where the export "
            "has document versions (exports made before the document pane have none); `tables=` "
            "leaves the rest on disk. Pilot rows are dropped unless `INCLUDE_PILOT`; exclusions "
            "come only from the recorded `excluded` flag."
        ),
        code(
            "tables = ['participants', 'turn_ratings']\n"
            "if has_table(EXPORT_DIR, 'document_versions'):\n"
            "    tables += ['messages', 'document_versions']\n"
            "export = load_export(EXPORT_DIR, tables=tables)\n"
            "prep = prepare(export, reference_arm=REFERENCE_ARM, include_pilot=INCLUDE_PILOT)\n"
            "people, ratings, arms = prep.participants, prep.turn_ratings, prep.arms\n"
            "print(f'{prep.n_loaded} loaded, {prep.n_pilot_dropped} pilots dropped, '\n"
            "      f'{len(people)} analysed; arms: {arms}; outcomes: {prep.outcomes}')\n"
            "prep.exclusions"
        ),
        md("## Descriptives per arm\n\nN, mean, SD, median and a bootstrap CI of the mean."),
        code(
            "descriptives = {o: stats.describe(people, o, level=LEVEL, **BOOT) "
            "for o in prep.outcomes}\n"
            "pd.concat(descriptives, names=['outcome']).droplevel(1)"
        ),
        md("## Omnibus tests\n\nKruskal-Wallis H and one-way ANOVA across arms."),
        code(
            "omnibus = pd.DataFrame([vars(stats.omnibus(people, o)) for o in prep.outcomes])\n"
            "omnibus"
        ),
        md(
            "## Pairwise tests and effect sizes\n\n"
            "Welch's t and Mann-Whitney U with Holm's correction within each outcome; the "
            "difference of means (Welch CI), Hedges' g and Cliff's delta with CIs, all read as "
            "arm a versus arm b, where b is the reference arm in every pair that has it."
        ),
        code(
            "pairs = {\n"
            "    o: stats.pairwise(\n"
            "        people, o, order=stats.reference_first(arms, prep.reference_arm),\n"
            "        reference=prep.reference_arm, **BOOT,\n"
            "    )\n"
            "    for o in prep.outcomes\n"
            "}\n"
            "pairs['overall_interaction']"
        ),
        md("## Relative change against the reference arm\n\nWith a bootstrap CI."),
        code(
            "changes = {\n"
            "    o: stats.relative_change(people, o, reference=prep.reference_arm, level=LEVEL, "
            "**BOOT)\n"
            "    for o in prep.outcomes\n"
            "}\n"
            "pd.concat(changes, names=['outcome']).droplevel(1)"
        ),
        md("## Shares of high ratings\n\nWith Wilson intervals."),
        code(
            "shares = {\n"
            "    (o, t): stats.share_at_least(people, o, t, level=LEVEL)\n"
            "    for o in prep.share_outcomes\n"
            "    for t in SHARE_THRESHOLDS\n"
            "}\n"
            "pd.concat(shares, names=['outcome', 'threshold']).droplevel(2)"
        ),
        md(
            "## Rating trajectories\n\n"
            "Mean rating per checkpoint with bootstrap CIs, and the mixed model "
            "`score ~ arm * after_turn + (1 | participant)`."
        ),
        code(
            "means = trajectories.trajectory_means(ratings, level=LEVEL, **BOOT)\n"
            "model = trajectories.mixed_model(ratings, reference_arm=prep.reference_arm)\n"
            "print(model.formula, '| converged:', model.converged)\n"
            "print('random-intercept variance', model.group_var, '| residual variance',\n"
            "      model.residual_var, '| ICC', model.icc)\n"
            "model.coefficients"
        ),
        md(
            "## How the document was made\n\n"
            "Per participant: edits (versions before the submitted one), versions per completed "
            "turn, the share of the final document found verbatim in the participant's own "
            f"assistant replies (runs of at least {documents.MIN_MATCH_CHARS} characters; a "
            "continued reply is its parts joined), seconds to the first edit and the final "
            "length; per arm, the mean with a percentile bootstrap CI."
        ),
        code(
            "per_participant = documents.measures(\n"
            "    people, prep.document_versions, documents.replies(prep.replies)\n"
            ")\n"
            "doc = documents.document_sections(\n"
            "    people, prep.document_versions, prep.replies, arms, SEED, N_BOOT, LEVEL\n"
            ")\n"
            "print(*doc['notes'], sep='\\n')\n"
            "pd.concat(doc['per_arm'], names=['measure']).droplevel(1)"
        ),
        md("## Per document type"),
        code(
            "by_type = {o: stats.by_group(people, o, level=LEVEL, **BOOT) for o in prep.outcomes}\n"
            "by_type['overall_interaction']"
        ),
        md(
            "## Power\n\n"
            "Achieved power for each pair's observed Hedges' g, and the N per arm needed for it "
            "(and for d = 0.5) at the report's alpha and power."
        ),
        code(
            "print('N per arm for d = 0.5:', power.n_per_arm(0.5, alpha=ALPHA, "
            "power=TARGET_POWER))\n"
            "observed = pd.concat(pairs, names=['outcome']).droplevel(1).reset_index()\n"
            "observed = observed[observed['hedges_g'].abs() > 1e-9].copy()\n"
            "observed['achieved_power'] = [\n"
            "    power.achieved_power(g, a, b, alpha=ALPHA)\n"
            "    for g, a, b in zip(observed['hedges_g'], observed['n_a'], observed['n_b'])\n"
            "]\n"
            "observed['n_per_arm_for_observed'] = [\n"
            "    power.n_per_arm(g, alpha=ALPHA, power=TARGET_POWER)\n"
            "    for g in observed['hedges_g']\n"
            "]\n"
            "observed[['outcome', 'arm_a', 'arm_b', 'hedges_g', 'achieved_power', "
            "'n_per_arm_for_observed']]"
        ),
    ]


def build_notebook(
    export_dir_name: str,
    *,
    reference_arm: str,
    seed: int,
    include_pilot: bool = False,
    n_boot: int = 2000,
) -> nbformat.NotebookNode:
    """A notebook that loads the export at export_dir_name and reproduces the report."""
    notebook = v4.new_notebook()
    notebook.cells = _cells(export_dir_name, reference_arm, seed, include_pilot, n_boot)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook
