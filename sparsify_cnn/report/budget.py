"""Whether the accuracy budget held on each split. Searches keep the loss under epsilon on the
calibration split only; masks can fit those few images and lose more on the held-out test
split. Every technique's report and the command's last lines say so from this one check."""

from __future__ import annotations

import math

from ..search.accuracy_budget import TOLERANCE, accuracy_loss, within


def points_per_image(images: int) -> float:
    """Accuracy points one image is worth on a split of ``images`` images (100 / N)."""
    return 100 / images


def check_budget(calib: tuple[float, float], test: tuple[float, float], sizes: tuple[int, int],
                 epsilon: float | None, kind: str = "absolute") -> dict:  # fmt: skip
    """Check (dense, final) accuracies of the calib and test splits, of ``sizes`` images, against
    ``epsilon``; the verdict is ``held``, ``calibration_overfitting`` (held on calib only),
    ``exceeded`` (not held on calib either) or ``no_budget`` (epsilon None). Example::

        check_budget((0.98, 0.98), (0.98, 0.96), (359, 360), 0.01)["verdict"]  # 'calibration_overfitting'
    """
    splits = {}
    for name, (dense, final), images in zip(("calib", "test"), (calib, test), sizes):
        loss = accuracy_loss(dense, final, kind)
        splits[name] = {"images": images, "dense": dense, "final": final, "loss": loss,
                        "loss_points": 100 * (dense - final), "points_per_image": points_per_image(images),
                        "held": None if epsilon is None else within(dense, final, epsilon, kind)}  # fmt: skip
    if epsilon is None:
        verdict = "no_budget"
    elif splits["test"]["held"] and splits["calib"]["held"]:
        verdict = "held"
    else:
        verdict = "calibration_overfitting" if splits["calib"]["held"] else "exceeded"
    budget = {"epsilon": epsilon, "kind": kind, "verdict": verdict, "splits": splits}
    return budget | {"warning": budget_warning(budget)}


def accuracy_checks(result) -> dict:
    """A report's ``budget`` and ``warnings`` (the job's own, e.g. a one-class dense model, then the
    budget's): what the command repeats on stderr."""
    budget = result_budget(result)
    return {"budget": budget, "warnings": [*result.warnings, *([budget["warning"]] if budget["warning"] else [])]}


def checks_markdown(data: dict) -> list[str]:
    """The lines under a report's accuracy table: every warning (the budget's among them), and
    how the budget held when it did."""
    paragraphs = [f"**Warning:** {warning}" for warning in data["warnings"]]
    if not data["budget"]["warning"]:
        paragraphs.append(budget_summary(data["budget"]))
    return [line for paragraph in paragraphs for line in ("", paragraph)]


def result_budget(result) -> dict:
    """:func:`check_budget` for a job's outcome: its scores, final state and the epsilon its plan
    records (none for SSC, or perforation with only --speedup)."""
    scores, search = result.scores, result.plan.search
    final = list(scores["test"])[-1]  # sparse, perforated, ssc or finetuned
    calib, test = scores["calib"], scores["test"]
    return check_budget((calib["dense"].value, calib[final].value), (test["dense"].value, test[final].value),
                        (calib[final].count, test[final].count), search.get("epsilon"),
                        search.get("epsilon_kind", "absolute"))  # fmt: skip


def budget_warning(budget: dict) -> str | None:
    """One line saying where the budget did not hold and what one image is worth there, or None."""
    verdict, calib, test = budget["verdict"], budget["splits"]["calib"], budget["splits"]["test"]
    if verdict in ("held", "no_budget"):
        return None
    if verdict == "calibration_overfitting":
        head = "the accuracy budget held on the calibration split but not on the test split (calibration overfitting)"
        advice = "Use more calibration images or a smaller --epsilon."
    else:
        head = "the accuracy budget did not hold on the calibration split (nor on the test split)"
        if test["held"]:
            head = "the accuracy budget did not hold on the calibration split (it did on the test split)"
        advice = "The plan changed after the search chose it (fine-tuning or the crossover rule)."
    return (f"{head}: {budget_allowance(budget)}; calib lost {_loss(calib, budget['kind'])} over "
            f"{_images(calib)}, test lost {_loss(test, budget['kind'])} over {_images(test)}. {advice}")


def budget_allowance(budget: dict) -> str:
    """'epsilon 0.01 (absolute) allows 1.00 points, 3 of the 359 calibration images'."""
    calib, epsilon = budget["splits"]["calib"], budget["epsilon"]
    allowed = epsilon * (calib["dense"] if budget["kind"] == "relative" else 1)
    images = math.floor(allowed * calib["images"] + TOLERANCE)
    return (f"epsilon {epsilon:g} ({budget['kind']}) allows {100 * allowed:.2f} points, {images} of the "
            f"{calib['images']} calibration images")


def budget_summary(budget: dict) -> str:
    """The report's one line on the budget: the warning where it did not hold, else the losses."""
    if budget["warning"]:
        return budget["warning"]
    calib, test = budget["splits"]["calib"], budget["splits"]["test"]
    losses = (f"calib lost {_loss(calib, budget['kind'])} over {_images(calib)}, test lost "
              f"{_loss(test, budget['kind'])} over {_images(test)}")  # fmt: skip
    if budget["verdict"] == "no_budget":
        return f"No accuracy budget (epsilon) was set; {losses}."
    return f"The accuracy budget held on both splits: {budget_allowance(budget)}; {losses}."


def _loss(split: dict, kind: str) -> str:
    points = f"{split['loss_points']:.2f} points"
    return f"{100 * split['loss']:.2f}% of the dense accuracy ({points})" if kind == "relative" else points


def _images(split: dict) -> str:
    return f"{split['images']} images (1 image = {split['points_per_image']:.2f} points)"
