"""`manage.py preview_design <slug>`: a study's design over simulated arrivals; writes nothing.

    manage.py preview_design pilot-1 --arrivals 10000 --return-rate 0.1 --param-values uk,us

Runs the production allocator (`studies.services.allocation.allocate` / `release`) on in-memory
state, as real (non-pilot) participants: caps apply, returned participants free their slot when the
study reuses slots. Prints arrivals per arm and per stratum among those who stayed, the largest
imbalance, and a χ² goodness-of-fit test of the arm counts against the weights.
"""

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from scipy.stats import chisquare

from studies.models import Study
from studies.services import allocation, assignment

RETURN_DELAY = (1, 50)  # a returning participant leaves this many arrivals later (uniform)


@dataclass
class Simulation:
    strata: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    documents: Counter = field(default_factory=Counter)
    refused: int = 0
    returned: int = 0
    reused: int = 0
    fallbacks: int = 0

    @property
    def arms(self) -> Counter:
        return sum(self.strata.values(), Counter())


def simulate(
    study: Study,
    arm_design: allocation.Design,
    doc_design: allocation.Design,
    *,
    arrivals: int,
    return_rate: float,
    param_values: list[str],
    seed: int = 0,
) -> Simulation:
    """Run `arrivals` through the allocator as assign_participant and release_slot would."""
    rng = random.Random(seed)
    states: dict[str, Any] = {}
    in_study: Counter = Counter()
    pending: list[tuple[int, int, dict]] = []
    sim = Simulation()
    name = study.stratify_by.removeprefix("param:")
    for i in range(arrivals):
        for entry in [p for p in pending if p[0] <= i]:
            pending.remove(entry)
            _leave(sim, study, states, in_study, entry)
        doc, doc_state = allocation.allocate(
            doc_design, stratum=allocation.DOCUMENT_STRATUM, state=states.get("document_type")
        )
        params = {name: rng.choice(param_values)} if param_values else {}
        stratum = allocation.arm_stratum(
            stratify_by=study.stratify_by, params=params, document_type=doc.choice
        )
        try:
            slot, arm_state = allocation.allocate(
                arm_design, stratum=stratum, state=states.get(stratum), study_occupied=in_study
            )
        except allocation.AllocationFull:
            sim.refused += 1
            continue
        states[allocation.DOCUMENT_STRATUM], states[stratum] = doc_state, arm_state
        in_study[slot.choice] += 1
        sim.strata[stratum][slot.choice] += 1
        sim.documents[doc.choice] += 1
        sim.reused += slot.reused_from is not None
        sim.fallbacks += slot.cap_fallback
        if rng.random() < return_rate:
            record = {"arm": slot.as_record(), "document_type": doc.as_record()}
            pending.append((i + rng.randint(*RETURN_DELAY), i, record))
    return sim


def _leave(sim: Simulation, study: Study, states: dict, in_study: Counter, entry: tuple) -> None:
    _, participant, record = entry
    arm, doc = record["arm"], record["document_type"]
    sim.returned += 1
    sim.strata[arm["stratum"]][arm["choice"]] -= 1
    sim.documents[doc["choice"]] -= 1
    if study.reuse_slots:
        in_study[arm["choice"]] -= 1
        for rec in (doc, arm):
            states[rec["stratum"]] = allocation.release(
                states.get(rec["stratum"]), rec, participant_id=participant
            )


class Command(BaseCommand):
    help = (
        "Simulate a study's assignment design over many arrivals (reads the study, writes nothing)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--arrivals", type=int, default=10_000)
        parser.add_argument(
            "--return-rate",
            type=float,
            default=0.0,
            help="Share of assigned participants who return, time out or are excluded later.",
        )
        parser.add_argument(
            "--param-values",
            default="",
            help="Comma-separated values of the stratifying recruiting parameter, drawn uniformly.",
        )
        parser.add_argument("--seed", type=int, default=0, help="Seed of the simulated arrivals.")

    def handle(self, *args: Any, **options: Any) -> None:
        study = Study.objects.filter(slug=options["slug"]).first()
        if study is None:
            raise CommandError(f"No study {options['slug']!r}.")
        problems = assignment.design_problems(study)
        if problems:
            raise CommandError("The design cannot run:\n" + "\n".join(problems))
        conditions = list(study.conditions.filter(is_active=True))
        doc_types = sorted(set(study.tasks.values_list("document_type", flat=True)))
        values = [v.strip() for v in options["param_values"].split(",") if v.strip()]
        if study.stratify_by.startswith("param:") and not values:
            self.stdout.write("No --param-values: every simulated participant is 'unknown'.")
        design = assignment.arm_design(study, conditions)
        sim = simulate(
            study,
            design,
            assignment.document_design(study, doc_types),
            arrivals=options["arrivals"],
            return_rate=options["return_rate"],
            param_values=values,
            seed=options["seed"],
        )
        self._report(study, design, sim, options)

    def _report(self, study: Study, design: allocation.Design, sim: Simulation, options) -> None:
        out = self.stdout.write
        weights = {a.key: a.weight for a in design.arms}
        out(
            f"Study {study.slug}: design {study.design}, block sizes {list(design.block_sizes)}, "
            f"stratify by {study.stratify_by or '(none)'}, reuse slots "
            f"{'yes' if study.reuse_slots else 'no'}, seed {study.seed}, "
            f"algorithm {allocation.ALGORITHM_VERSION}"
        )
        out(
            f"{options['arrivals']} arrivals, return rate {options['return_rate']:g}: "
            f"{sim.returned} returned, {sim.reused} took a freed slot, {sim.fallbacks} cap "
            f"fallbacks, {sim.refused} refused as full"
        )
        self._arms(design, sim.arms)
        out("")
        out(f"{'stratum':<40} {'n':>6} " + " ".join(f"{k:>10}" for k in weights) + "  imbalance")
        worst = 0.0
        for stratum, counts in sorted(sim.strata.items()):
            gap = allocation.imbalance(counts, weights)
            worst = max(worst, gap)
            cells = " ".join(f"{counts[k]:>10}" for k in weights)
            out(f"{stratum[:40]:<40} {sum(counts.values()):>6} {cells}  {gap:g}")
        out(f"Max imbalance per stratum: {worst:g} (count per unit of weight, max - min)")
        out("Document types: " + ", ".join(f"{d} {n}" for d, n in sorted(sim.documents.items())))

    def _arms(self, design: allocation.Design, counts: Counter) -> None:
        out = self.stdout.write
        total, weight_sum = sum(counts.values()), sum(a.weight for a in design.arms)
        out("")
        out(f"{'arm':<20} {'weight':>6} {'cap':>6} {'n':>7} {'share':>7} {'expected':>8}")
        for arm in design.arms:
            share = counts[arm.key] / total if total else 0.0
            cap = "-" if arm.cap is None else str(arm.cap)
            expected = arm.weight / weight_sum
            out(
                f"{arm.key:<20} {arm.weight:>6} {cap:>6} {counts[arm.key]:>7} "
                f"{share:>7.3f} {expected:>8.3f}"
            )
        if len(design.arms) < 2 or not total:
            return
        observed = [counts[a.key] for a in design.arms]
        expected_n = [total * a.weight / weight_sum for a in design.arms]
        test = chisquare(observed, expected_n)
        out(
            f"χ² goodness of fit vs weights: χ² = {test.statistic:.3f}, "
            f"df = {len(observed) - 1}, p = {test.pvalue:.3f}"
        )
        if any(a.cap is not None or a.cap_per_stratum is not None for a in design.arms):
            out("Caps are set: where they bind, counts depart from the weights by design.")
