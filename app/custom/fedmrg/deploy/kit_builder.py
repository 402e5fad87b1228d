"""A FLARE provisioning builder that makes every server and client startup kit ready for FedMRG jobs.

FLARE 2.9 builds only component classes on a site's allow-list (``class_allow_list`` of ``local/resources.json``,
else ``local/resources.json.default``); FedMRG jobs ship no code, so each site must allow the ``fedmrg.`` package
and the exact NVFlare classes the jobs name. The builder also writes the project's authorization policy, so a kit
arrives at a hospital with both already in place. In ``project.yml``, after ``StaticFileBuilder`` (whose
``local/*.default`` files it edits) and before ``SignatureBuilder``::

    - path: fedmrg.deploy.kit_builder.FedMRGKitBuilder
      args:
        class_allow_list: [fedmrg., nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval]
        authorization: {format_version: "1.0", permissions: {project_admin: any, lead: {submit_job: any}}}

It edits the provisioned defaults (``resources.json.default``: FLARE's default list plus ``class_allow_list``;
``authorization.json.default``: replaced by ``authorization``); a site keeps overriding both with its own
``local/resources.json`` / ``local/authorization.json``. ``nvflare provision`` and ``nvflare poc prepare -i`` must
run with ``fedmrg`` importable (the same virtual environment).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nvflare.lighter.constants import ProvFileName
from nvflare.lighter.ctx import ProvisionContext
from nvflare.lighter.entity import Project
from nvflare.lighter.spec import Builder

ALLOW_LIST_KEY = "class_allow_list"


def extend_allow_list(resources_file: str | Path, entries: list[str]) -> list[str]:
    """Append ``entries`` missing from ``class_allow_list`` of the JSON file ``resources_file``; return the list."""
    path = Path(resources_file)
    try:
        resources = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable as JSON: {e}") from e
    current = list(resources.get(ALLOW_LIST_KEY) or [])
    resources[ALLOW_LIST_KEY] = [*current, *(e for e in entries if e not in current)]
    path.write_text(json.dumps(resources, indent=2) + "\n")
    return resources[ALLOW_LIST_KEY]


class FedMRGKitBuilder(Builder):
    """Adds FedMRG's component classes to every server/client kit's allow-list and writes the authorization policy.

    Args:
        class_allow_list: class paths or package prefixes (ending in ``.``) to allow at every site, e.g.
            ``["fedmrg.", "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval"]``.
        authorization: FLARE authorization policy (``{"format_version": "1.0", "permissions": {role: ...}}``) for
            the server and every client; None keeps FLARE's default policy.
    """

    def __init__(self, class_allow_list: list[str], authorization: dict[str, Any] | None = None):
        if not isinstance(class_allow_list, list) or not all(isinstance(p, str) and p for p in class_allow_list):
            raise ValueError(
                f"FedMRGKitBuilder: `class_allow_list` must be a list of class paths, got {class_allow_list!r}"
            )
        if authorization is not None and not isinstance((authorization or {}).get("permissions"), dict):
            raise ValueError("FedMRGKitBuilder: `authorization` must be a FLARE policy with a `permissions` mapping")
        self.class_allow_list = class_allow_list
        self.authorization = authorization

    def build(self, project: Project, ctx: ProvisionContext) -> None:
        for participant in [project.get_server(), *project.get_clients()]:
            if participant is None:
                continue
            local = Path(ctx.get_local_dir(participant))
            resources = local / ProvFileName.RESOURCES_JSON_DEFAULT
            if not resources.is_file():
                raise ValueError(f"FedMRGKitBuilder: {resources} missing; list this builder after StaticFileBuilder")
            extend_allow_list(resources, self.class_allow_list)
            if self.authorization is not None:
                authz = local / ProvFileName.AUTHORIZATION_JSON_DEFAULT
                authz.write_text(json.dumps(self.authorization, indent=2) + "\n")
            ctx.info(f"FedMRG: allow-list and authorization policy written for {participant.name}")
