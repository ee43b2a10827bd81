"""Kubernetes label-selector matching (matchLabels AND matchExpressions), pure."""

from __future__ import annotations

from collections.abc import Mapping

from secgroups.models import LabelSelector, LabelSelectorRequirement


def _requirement_matches(req: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    present = req.key in labels
    if req.operator == "Exists":
        return present
    if req.operator == "DoesNotExist":
        return not present
    if req.operator == "In":
        return present and labels[req.key] in req.values
    return not present or labels[req.key] not in req.values  # NotIn


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when ``labels`` satisfy every matchLabels pair and every matchExpression.

    An empty selector matches everything, as in Kubernetes.
    """
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    return all(_requirement_matches(r, labels) for r in selector.match_expressions)
