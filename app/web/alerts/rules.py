"""Settings → Alert rules: each built-in rule's fleet-wide setting (admins change them)."""

from __future__ import annotations

from typing import Optional

from flask import flash, redirect, render_template, request, url_for

from app.access import Role, require_role
from app.authn import client_address, current_actor
from app.extensions import db
from app.models.types import utcnow
from app.services import alerts
from app.services.errors import ValidationFailed
from app.transaction import commit_and_wake
from app.web.alerts import bp
from app.web.alerts.forms import RuleForm
from app.web.forms import place_errors


def _render(
    submitted: Optional[RuleForm] = None,
    submitted_rule: str = "",
    problem: Optional[str] = None,
    status: int = 200,
):
    views = alerts.list_rules()
    forms = {
        view["rule"]: submitted
        if view["rule"] == submitted_rule and submitted is not None
        else RuleForm.for_rule(view)
        for view in views
    }
    return render_template(
        "alerts/rules.html",
        views=views,
        forms=forms,
        submitted_rule=submitted_rule,
        problem=problem,
        page_url=url_for("alerts.rules") if request.method == "POST" else None,
    ), status


@bp.get("/settings/alert-rules")
@require_role(Role.viewer)
def rules():
    return _render()


@bp.post("/settings/alert-rules/<rule>")
@require_role(Role.admin)
def update_rule(rule: str):
    alerts.get_rule(rule)  # an unknown rule is a 404
    view = alerts.rule_view(rule)
    form = RuleForm.for_rule(view, formdata=request.form)
    values = form.values(view)
    if values is None:
        return _render(form, rule, status=422)
    try:
        alerts.update_rule(
            rule, values, actor=current_actor(), now=utcnow(), client_address=client_address()
        )
    except ValidationFailed as refused:
        db.session.rollback()
        unplaced = place_errors(
            form, {RuleForm.SERVICE_FIELDS.get(k, k): v for k, v in refused.fields.items()}
        )
        return _render(form, rule, problem=" ".join(unplaced) or None, status=422)
    commit_and_wake()
    flash(f"“{view['label']}” saved.", "success")
    return redirect(url_for("alerts.rules") + f"#rule-{rule}", 303)
