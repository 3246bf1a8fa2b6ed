"""Issue 15 "done when", walked through once, in order, with real parts: `restic-manager
serve`, a real OpenID provider process (oidc-provider-mock), a real agent with real restic,
and people driving the pages with an HTTP client (cookies, redirects followed, the CSRF token
and hidden fields taken from the form on the page, as a browser sends them).

Who is who:

* ``admin`` is made with the CLI (``create-admin``) and signs in with its password.
* The operator ``olivia`` is invited through Settings → Users, the viewer ``victor`` through
  ``POST /api/v1/users`` with the admin's token; each opens the link, chooses a password and
  is signed in. Olivia signs out and in again with her password.
* The group-mapped viewer is a second viewer, ``vera``: a sign-in through the provider never
  takes over a local password account of the same name (tests/test_oidc.py), so the invited
  viewer cannot also be the one who arrives through the provider. Vera's first sign-in
  creates her; her role comes from her ``groups`` claim (``auditors`` → viewer; the role map
  has no wildcard, so only the group can give it).

Then: olivia adds a schedule (an operator may); neither viewer can change anything (pages'
forms with their own CSRF token, the API with their own token and with the session) and
hosts, tags, schedules, users, jobs and enrollment tokens are as before; the agent backs up,
olivia restores through the restore form, the admin finds her in the audit viewer and the
API and exports the row as CSV; hosts are tagged (API and the dashboard's bulk form) and the
dashboard's tag filter shows only the tagged ones; the host is deleted on its Manage tab and
its agent stops on its own.
"""

from __future__ import annotations

import csv
import io
import re
from html import unescape
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.e2e.processes import (
    Api,
    OidcProvider,
    enroll_agent,
    require_restic,
    wait_stopped_for_deletion,
)

REPO_PASSWORD = "e2e-Teams-Repo-Password-7f3"
ADMIN_PASSWORD = "admin password for the teams walk"
OLIVIA_PASSWORD = "olivia chooses a long one"
VICTOR_PASSWORD = "victor reads but never writes"
ROLE_MAP = "backup-admins=admin,ops=operator,auditors=viewer"
WEB, DB = "e2e-web-1", "e2e-db-1"


# --- a person with a browser -----------------------------------------------------------------


class _Forms(HTMLParser):
    """Every <form> of a page: its action, the values a browser would send untouched (hidden
    and text inputs, checked boxes, selected options or a single select's first option,
    textareas) and the choices of each select, checkbox or radio as (value, label)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._form: dict | None = None
        self._select: tuple[str, bool] | None = None  # (name, multiple)
        self._option: list | None = None
        self._textarea: str | None = None
        self._labelled: dict[str, list] = {}  # a checkbox's or radio's id → its choice

    def handle_starttag(self, tag, attrs):
        attrs = {name: (value or "") for name, value in attrs}
        if tag == "form":
            self._form = {"action": attrs.get("action", ""), "fields": {}, "options": {}}
            self.forms.append(self._form)
        if self._form is None:
            return
        fields, name = self._form["fields"], attrs.get("name")
        if tag == "input" and name and "form" not in attrs:
            kind = attrs.get("type", "text")
            if kind in ("checkbox", "radio"):  # a choice, labelled by its <label for>
                choice = [attrs.get("value", "on"), ""]
                self._form["options"].setdefault(name, []).append(choice)
                self._labelled[attrs.get("id", "")] = choice
                if "checked" not in attrs:
                    return
            if kind not in ("submit", "button"):
                fields.setdefault(name, attrs.get("value", "on" if kind == "checkbox" else ""))
        elif tag == "select" and name:
            self._select = (name, "multiple" in attrs)
            self._form["options"][name] = []
        elif tag == "option" and self._select:
            select, multiple = self._select
            self._option = [attrs.get("value", ""), ""]
            self._form["options"][select].append(self._option)
            if "selected" in attrs or (not multiple and select not in fields):
                fields[select] = self._option[0]
        elif tag == "textarea" and name:
            self._textarea = name
            fields[name] = ""
        elif tag == "label" and attrs.get("for") in self._labelled:
            self._option = self._labelled[attrs["for"]]

    def handle_data(self, data):
        if self._form is not None and self._textarea:
            self._form["fields"][self._textarea] += data
        elif self._option is not None:
            self._option[1] += data.strip()

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag in ("option", "label"):
            self._option = None
        elif tag == "textarea":
            self._textarea = None


def _problems(html: str) -> str:
    """What a refused form says (its alerts and field errors), for a failure message."""
    said = re.findall(r'role="alert"[^>]*>(.*?)</(?:div|ul|section)>', html, flags=re.S)
    return " | ".join(re.sub(r"<[^>]+>|\s+", " ", text).strip() for text in said) or html[-800:]


class Browser:
    """A cookie jar that follows redirects and fills forms from the page they are on."""

    def __init__(self, base_url: str, name: str):
        self.base = base_url
        self.name = name
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"e2e browser of {name}"
        self.token = ""  # a personal access token, once minted on Settings → API tokens

    def url(self, path: str) -> str:
        return urljoin(self.base + "/", path.lstrip("/"))

    def get(self, path: str, expect: int = 200, **kwargs) -> requests.Response:
        response = self.session.get(self.url(path), timeout=15, **kwargs)
        assert response.status_code == expect, (
            f"{self.name}: GET {path} → {response.status_code}: {response.text[:800]}"
        )
        return response

    def form(self, page: str, action: str) -> dict:
        """The values the form posting to ``action`` on the page at ``page`` sends as is."""
        return self.parsed_form(page, action)["fields"]

    def option(self, page: str, action: str, select: str, label: str) -> str:
        """The value of the choice shown as ``label`` in that form's ``select`` (a select,
        or checkboxes or radios of that name)."""
        options = self.parsed_form(page, action)["options"][select]
        return next(value for value, shown in options if shown == label)

    def parsed_form(self, page: str, action: str) -> dict:
        html = self.get(page).text
        parser = _Forms()
        parser.feed(html)
        wanted = urlsplit(self.url(action)).path
        for found in parser.forms:
            if urlsplit(self.url(unescape(found["action"]) or page)).path == wanted:
                return found
        raise AssertionError(f"{self.name}: no form posting to {action} on {page}")

    def submit(
        self, page: str, action: str, fields: dict | None = None, expect: int = 200
    ) -> requests.Response:
        """Fill the form of ``page`` that posts to ``action`` and send it."""
        data = {**self.form(page, action), **(fields or {})}
        response = self.session.post(self.url(action), data=data, timeout=30)
        assert response.status_code == expect, (
            f"{self.name}: POST {action} → {response.status_code}: {_problems(response.text)}"
        )
        return response

    def csrf(self) -> str:
        """This session's CSRF token, from the sign-out form every page carries."""
        return self.form("/", "/logout")["csrf_token"]

    def sign_in(self, username: str, password: str) -> requests.Response:
        page = self.submit("/login", "/login", {"username": username, "password": password})
        assert urlsplit(page.url).path == "/", page.url
        return page

    def sign_out(self) -> None:
        page = self.submit("/", "/logout")
        assert urlsplit(page.url).path == "/login" and "You are signed out" in page.text


def signed_in_as(page: requests.Response) -> tuple[str, str]:
    """(username, role) from the page's user menu."""
    name = re.search(r'class="usermenu__name">([^<]+)<', page.text)
    role = re.search(r'class="badge badge--(\w+)"', page.text)
    assert name and role, page.text[:1500]
    return unescape(name.group(1)), role.group(1)


def listed_hosts(page: requests.Response) -> set[str]:
    """The hostnames in the dashboard's fleet table."""
    return {
        unescape(name)
        for name in re.findall(r'class="hostlink" href="[^"]*">([^<]+)</a>', page.text)
    }


# --- the walk-through ------------------------------------------------------------------------


@pytest.fixture
def provider(tmp_path):
    provider = OidcProvider(tmp_path)
    provider.start()
    yield provider
    provider.stop_or_kill(10)


def test_admin_invites_a_team_that_signs_in_restores_tags_and_decommissions(
    start_server, provider, tmp_path
):
    require_restic()
    server = start_server(
        RM_OFFLINE_AFTER_SECONDS="20",
        RM_POLL_WAIT_SECONDS="5",
        RM_LOG_FLUSH_SECONDS="1",
        RM_OIDC_ISSUER=provider.issuer,
        RM_OIDC_CLIENT_ID="restic-manager",
        RM_OIDC_CLIENT_SECRET="e2e-oidc-client-secret-9c2",
        RM_OIDC_DISPLAY_NAME="Company SSO",
        RM_OIDC_ROLE_MAP=ROLE_MAP,
    )
    api = Api(server, server.admin_token(password=ADMIN_PASSWORD))

    # Two hosts: web (its agent runs: backups, restores, then decommissioned) and db (only
    # enrolled, so a tag filter has something to leave out).
    home = tmp_path / "home"
    data = tmp_path / "data"
    (data / "docs").mkdir(parents=True)
    report = data / "docs" / "report.txt"
    report.write_text("quarterly numbers\n" * 40)
    agent = enroll_agent(
        api,
        server,
        hostname=WEB,
        repo=tmp_path / "repo-web",
        repo_password=REPO_PASSWORD,
        home=tmp_path / "agent-web",
        log_path=tmp_path / "agent-web.log",
        paths=(str(data),),
        HOME=str(home),
    )
    enroll_agent(
        api,
        server,
        hostname=DB,
        repo=tmp_path / "repo-db",
        repo_password=REPO_PASSWORD,
        home=tmp_path / "agent-db",
        log_path=tmp_path / "agent-db.log",
    )
    ids = {host["hostname"]: host["id"] for host in api.get("/hosts").json()["items"]}
    web, db = ids[WEB], ids[DB]
    agent.start()
    try:
        # The agent initialises its repository and backs up while the team signs in.
        api.wait_repo_ready(web)
        backup = api.run(web, "backup")

        admin, olivia, victor, vera = _team_signs_in(server, api, provider)
        schedule = _operator_adds_a_schedule(api, olivia, web)
        _viewers_cannot_change_anything(api, (victor, vera), web, db, schedule)
        job_id = _operator_restores(api, olivia, backup, web, home, report)
        _admin_finds_who_restored(api, admin, job_id)
        _hosts_are_tagged_and_filtered(api, admin, victor, web, db)
        _host_is_deleted_and_its_agent_stops(api, admin, agent, web, db)
    finally:
        if agent.running():
            agent.stop_or_kill(10)
    log = agent.log() + server.log()
    for secret in (REPO_PASSWORD, ADMIN_PASSWORD, OLIVIA_PASSWORD, VICTOR_PASSWORD):
        assert secret not in log
    assert "e2e-oidc-client-secret-9c2" not in server.log()


def _team_signs_in(server, api: Api, provider: OidcProvider):
    """Step 1-3: the admin invites both ways; each of the team signs in."""
    admin = Browser(server.url, "admin")
    assert signed_in_as(admin.sign_in("admin", ADMIN_PASSWORD)) == ("admin", "admin")

    # The operator through Settings → Users: the link is shown once, on the answer.
    page = admin.submit(
        "/settings/users", "/settings/users", {"username": "olivia", "role": "operator"}, 201
    )
    olivia_link = unescape(re.search(r'id="invite-link"[^>]*>([^<]+)<', page.text).group(1))
    assert olivia_link.startswith(server.url + "/invite/")
    # The viewer through the API, with the admin's token.
    invited = api.post("/users", {"username": "victor", "role": "viewer"})
    assert (invited["username"], invited["role"], invited["disabled"]) == (
        "victor",
        "viewer",
        False,
    )
    assert invited["invite_url"].startswith(server.url + "/invite/")
    pending = {user["username"]: user for user in api.get("/users").json()["items"]}
    assert pending["olivia"]["role"] == "operator" and pending["victor"]["role"] == "viewer"

    # Each opens the link, chooses a password and is signed in.
    olivia = Browser(server.url, "olivia")
    victor = Browser(server.url, "victor")
    for person, link, password in (
        (olivia, olivia_link, OLIVIA_PASSWORD),
        (victor, invited["invite_url"], VICTOR_PASSWORD),
    ):
        path = urlsplit(link).path
        welcome = person.submit(path, path, {"password": password, "confirm": password})
        assert urlsplit(welcome.url).path == "/"
        assert f"Welcome, {person.name}" in welcome.text
        assert signed_in_as(welcome)[0] == person.name
        # The link was for one use.
        assert "Link not valid" in person.get(path, expect=404).text
    assert signed_in_as(olivia.get("/")) == ("olivia", "operator")
    assert signed_in_as(victor.get("/")) == ("victor", "viewer")

    # Olivia signs out and in again with the password she chose.
    olivia.sign_out()
    assert urlsplit(olivia.get("/").url).path == "/login"
    assert signed_in_as(olivia.sign_in("olivia", OLIVIA_PASSWORD)) == ("olivia", "operator")

    # Vera arrives through the provider; her group makes her a viewer.
    provider.set_claims(
        "sub-vera",
        {"preferred_username": "vera", "email": "vera@example.com", "groups": ["auditors"]},
    )
    vera = Browser(server.url, "vera")
    login = vera.get("/login")
    assert "Sign in with Company SSO" in login.text
    at_provider = vera.get("/login/oidc")
    assert at_provider.url.startswith(provider.issuer + "/"), at_provider.url
    landed = vera.session.post(at_provider.url, data={"sub": "sub-vera"}, timeout=15)
    assert landed.status_code == 200, landed.text[:800]
    assert urlsplit(landed.url).path == "/" and landed.url.startswith(server.url)
    assert signed_in_as(landed) == ("vera", "viewer")

    everyone = {user["username"]: user for user in api.get("/users").json()["items"]}
    assert {name: user["role"] for name, user in everyone.items()} == {
        "admin": "admin",
        "olivia": "operator",
        "victor": "viewer",
        "vera": "viewer",
    }
    return admin, olivia, victor, vera


def _state(api: Api, web: int, db: int) -> dict:
    """What a viewer must not be able to change, read through the admin's token."""
    return {
        "hosts": [
            (host["id"], host["hostname"], host["tags"])
            for host in api.get("/hosts").json()["items"]
        ],
        "schedules": {
            host: api.get(f"/hosts/{host}/schedules").json()["items"] for host in (web, db)
        },
        "users": sorted(
            (user["username"], user["role"], user["disabled"])
            for user in api.get("/users").json()["items"]
        ),
        "jobs": [job["id"] for job in api.get("/jobs").json()["items"]],
        "enrollment_tokens": [
            token["id"] for token in api.get("/enrollment-tokens").json()["items"]
        ],
    }


def _operator_adds_a_schedule(api: Api, olivia: Browser, web: int) -> int:
    """The operator may change things: a nightly schedule through the Schedules tab (it
    is also there to be left alone by the viewers)."""
    page = f"/hosts/{web}/schedules"
    group = olivia.option(page, page, "source_groups", "default")
    olivia.submit(page, page, {"name": "nightly", "cron": "0 3 * * *", "source_groups": group})
    (schedule,) = api.get(f"/hosts/{web}/schedules").json()["items"]
    assert (schedule["name"], schedule["cron"], schedule["enabled"]) == (
        "nightly",
        "0 3 * * *",
        True,
    )
    return schedule["id"]


def _viewers_cannot_change_anything(api: Api, viewers, web: int, db: int, schedule: int) -> None:
    """Step 4: forms with the viewer's own CSRF token and API calls (their own token, and
    their session) are refused with 403; nothing changed."""
    for viewer in viewers:
        minted = viewer.submit("/settings/tokens", "/settings/tokens", {"name": "mine"}, 201)
        viewer.token = re.search(r'id="new-token"[^>]*>([^<]+)<', minted.text).group(1)
    before = _state(api, web, db)
    user_ids = {user["username"]: user["id"] for user in api.get("/users").json()["items"]}
    for viewer in viewers:
        token = viewer.csrf()
        own_id = user_ids[viewer.name]
        forms = {
            f"/hosts/{web}/jobs": {"kind": "backup"},
            f"/hosts/{web}/restore": {"snapshot_id": "latest", "paths": "/etc", "mode": "new"},
            f"/hosts/{web}/schedules": {"name": "sneaky", "cron": "* * * * *"},
            f"/hosts/{web}/schedules/{schedule}/edit": {"name": "nightly", "cron": "* * * * *"},
            f"/hosts/{web}/schedules/{schedule}/enabled": {"enabled": ""},
            f"/hosts/{web}/schedules/{schedule}/delete": {},
            f"/hosts/{web}/manage/tags": {"tags": "mine"},
            f"/hosts/{web}/manage/rename": {"hostname": "renamed"},
            f"/hosts/{db}/manage/delete": {"confirm_hostname": DB},
            "/hosts/tags": {"host_ids": [web, db], "action": "add", "tag": "mine"},
            "/hosts/new": {"hostname": "sneaky-host", "repo_url": "/tmp/x", "paths": "/etc"},
            "/settings/users": {"username": "mallory", "role": "admin"},
            f"/settings/users/{own_id}/role": {"role": "admin"},
        }
        for path, fields in forms.items():
            response = viewer.session.post(
                viewer.url(path), data={"csrf_token": token, **fields}, timeout=15
            )
            assert response.status_code == 403, (viewer.name, path, response.status_code)

        bearer = requests.Session()
        bearer.headers["Authorization"] = f"Bearer {viewer.token}"
        calls = [
            ("PATCH", f"/hosts/{web}", {"tags": ["mine"]}),
            ("PUT", f"/hosts/{web}", {"hostname": "renamed"}),
            ("DELETE", f"/hosts/{db}", {"confirm_hostname": DB}),
            ("POST", "/hosts/tags", {"host_ids": [web], "add": ["mine"]}),
            ("POST", f"/hosts/{web}/jobs", {"kind": "backup", "params": {}}),
            ("POST", f"/hosts/{web}/restores", {"snapshot_id": "latest", "include": ["/etc"]}),
            ("POST", f"/hosts/{web}/schedules", {"name": "sneaky", "cron": "* * * * *"}),
            ("PUT", f"/hosts/{web}/schedules/{schedule}", {"name": "n", "cron": "* * * * *"}),
            ("DELETE", f"/hosts/{web}/schedules/{schedule}", None),
            ("POST", "/users", {"username": "mallory", "role": "admin"}),
            ("PATCH", f"/users/{own_id}", {"role": "admin"}),
            ("POST", "/enrollment-tokens", {"hostname": "sneaky-host", "repo_url": "/tmp/x"}),
        ]
        for method, path, body in calls:
            response = bearer.request(method, api.base + path, json=body, timeout=15)
            assert response.status_code == 403, (viewer.name, method, path, response.text[:300])
            assert response.json()["error"] == "forbidden", response.text[:300]
        # The same API with the browser's session and its CSRF header: refused alike.
        response = viewer.session.patch(
            f"{api.base}/hosts/{web}",
            json={"tags": ["mine"]},
            headers={"X-CSRFToken": token},
            timeout=15,
        )
        assert response.status_code == 403, response.text[:300]
        # Reading stays allowed.
        assert {WEB, DB} <= listed_hosts(viewer.get("/"))
        viewer.get(f"/hosts/{web}")
    assert _state(api, web, db) == before


def _operator_restores(api: Api, olivia: Browser, backup: int, web: int, home, report) -> int:
    """Step 5a: the backup ran; olivia restores the report through the restore form."""
    job = api.wait_job(backup)
    assert job["status"] == "succeeded", job
    snapshot = job["stats"]["snapshot_id"]
    page = f"/hosts/{web}/restore?snapshot={snapshot}"
    fields = olivia.form(page, f"/hosts/{web}/restore")
    assert fields["snapshot_id"] == snapshot  # the snapshot from the link is ticked
    answer = olivia.submit(page, f"/hosts/{web}/restore", {"paths": str(report), "mode": "new"})
    job_id = int(re.fullmatch(r"/jobs/(\d+)", urlsplit(answer.url).path).group(1))
    restored = api.wait_job(job_id)
    assert (restored["kind"], restored["status"]) == ("restore", "succeeded"), restored
    copy = home / "rm-restore" / str(job_id) / str(report).lstrip("/")
    assert copy.read_text() == report.read_text()
    return job_id


def _admin_finds_who_restored(api: Api, admin: Browser, job_id: int) -> None:
    """Step 5b: the audit viewer names olivia; the API agrees; the CSV says so too."""
    page = admin.get("/audit", params={"target_type": "job", "target_id": str(job_id)})
    rows = re.findall(r"<tr>\s*<td data-label=\"Time.*?</tr>", page.text, flags=re.S)
    assert len(rows) == 1, page.text[-3000:]
    assert ">olivia</a>" in rows[0] and ">host.restore</a>" in rows[0]
    assert f'href="/jobs/{job_id}">job {job_id}</a>' in rows[0]  # the row links to its target

    by_action = api.get("/audit", params={"action": "host.restore"}).json()["items"]
    assert [(item["actor"], item["target_id"]) for item in by_action] == [("olivia", str(job_id))]
    assert by_action[0]["payload"]["host"] == WEB

    # The page's export link carries its filters; the API's export answers the same.
    link = unescape(re.search(r'href="([^"]*/api/v1/audit\.csv[^"]*)"', page.text).group(1))
    from_page = admin.get(link)
    assert "attachment" in from_page.headers["Content-Disposition"]
    from_api = api.get("/audit.csv", params={"action": "host.restore"})
    for export in (from_page, from_api):
        (row,) = list(csv.DictReader(io.StringIO(export.text)))
        assert (row["actor"], row["action"], row["target_type"], row["target_id"]) == (
            "olivia",
            "host.restore",
            "job",
            str(job_id),
        )
        assert WEB in row["payload"]


def _hosts_are_tagged_and_filtered(api: Api, admin: Browser, viewer: Browser, web, db) -> None:
    """Step 6: tags through the API and the dashboard's bulk form; the filter shows only
    the tagged hosts (to everyone, viewers included)."""
    tagged = api.call("PATCH", f"/hosts/{web}", {"tags": ["db", "eu"]})
    assert tagged["tags"] == ["db", "eu"]
    admin.submit("/", "/hosts/tags", {"host_ids": [db], "action": "add", "tag": "postgres, eu"})
    assert {h["hostname"]: h["tags"] for h in api.get("/hosts").json()["items"]} == {
        WEB: ["db", "eu"],
        DB: ["postgres", "eu"],
    }
    for person in (admin, viewer):
        assert listed_hosts(person.get("/", params={"tag": "db"})) == {WEB}
        assert listed_hosts(person.get("/", params={"tag": "postgres"})) == {DB}
        assert listed_hosts(person.get("/", params={"tag": "eu"})) == {WEB, DB}
        assert listed_hosts(person.get("/")) == {WEB, DB}
    assert [h["hostname"] for h in api.get("/hosts", params={"tag": "db"}).json()["items"]] == [WEB]


def _host_is_deleted_and_its_agent_stops(api: Api, admin: Browser, agent, web, db) -> None:
    """Step 7: the Manage tab deletes the host once its name is typed; the agent stops."""
    manage, action = f"/hosts/{web}/manage", f"/hosts/{web}/manage/delete"
    wrong = admin.submit(manage, action, {"confirm_hostname": "e2e-web"}, expect=422)
    assert "field--error" in wrong.text
    assert agent.running()
    assert {h["id"] for h in api.get("/hosts").json()["items"]} == {db, web}
    done = admin.submit(manage, action, {"confirm_hostname": WEB})
    assert urlsplit(done.url).path == "/"
    assert f"{WEB} was deleted" in unescape(done.text)
    assert listed_hosts(done) == {DB}
    wait_stopped_for_deletion(agent, WEB, timeout=15)
    api.call("GET", f"/hosts/{web}", expect=404)
    deleted = api.get("/audit", params={"action": "host.deleted"}).json()["items"]
    assert [(item["actor"], item["target_id"]) for item in deleted] == [("admin", str(web))]
