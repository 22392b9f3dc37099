"""The sans-I/O core's decisions, one rule at a time, from plain statuses, headers and bodies: no server, no HTTP.

The HTTP tests (test_session, test_open_site, test_hardening, test_async_client) show each rule at work through
both transports; here each rule is visible on its own: what a login answer means, when to log in again, when a
request is resent, what an answer or a library failure is raised as, and what the lookups read.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import tenacity

from xnat_provider.client.config import ClientConfig, Secrets
from xnat_provider.client.core import (
    Answer,
    LibraryErrors,
    LoginState,
    Relogin,
    ReloginStep,
    RetryWait,
    Runner,
    Send,
    attempt,
    login_failure,
    redirected_base,
    retry_policy,
    session_gone,
    transport_failure,
)
from xnat_provider.client.errors import (
    RedactedCause,
    XnatAuthError,
    XnatBadInputError,
    XnatConflictError,
    XnatError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatServerError,
)
from xnat_provider.client.models import Experiment
from xnat_provider.client.protocol import (
    Item,
    Rows,
    experiment_lookup,
    experiment_path_lookup,
    or_none,
    prearchive_row_lookup,
    scans_lookup,
)

PASSWORD = "Core-Pw-5e1d"
ERROR_PAGE = "<html><body><h3>{}</h3></body></html>"
HTML = {"Content-Type": "text/html;charset=UTF-8"}


def state(user: str | None = "alice") -> LoginState:
    return LoginState(ClientConfig("https://xnat.example.org", user, PASSWORD), Secrets(None))


def unread() -> str:
    raise AssertionError("the body was read")


def run(flow: Generator[Any, Any, Any], replies: list[Any]) -> tuple[list[Any], Any]:
    """Drive ``flow`` with ``replies`` in turn (an exception is thrown in); the steps it asked for, and its result."""
    steps, runner = [], Runner(flow)
    while (step := runner.step()) is not None:
        steps.append(step)
        with runner.replying():
            reply = replies.pop(0)
            if isinstance(reply, BaseException):
                raise reply
            runner.reply = reply
    assert not replies, f"replies left over: {replies}"
    return steps, runner.result


def ok(status: int = 200, **kw: Any) -> Answer:
    return Answer(status, kw.pop("headers", {}), **kw)


# ---- the login ------------------------------------------------------------------------------------------------
def test_a_login_answer_gives_the_session_id_which_becomes_a_secret() -> None:
    login = state()
    assert login.begin() == {"username": "alice", "password": PASSWORD}
    assert login.finish(200, " 0123ABCD\n") == "0123ABCD"
    assert login.secrets.redact("cookie 0123ABCD") == "cookie ***"
    login.established("https://xnat.example.org")
    assert (login.generation, login.logged_in, login.attempts) == (1, True, 1)


def test_no_user_is_refused_before_anything_is_sent() -> None:
    login = state(user=None)
    with pytest.raises(XnatAuthError, match="No XNAT user"):
        login.begin()
    assert login.attempts == 0 and not login.credentials_refused


def test_refused_credentials_are_remembered_and_not_sent_again_until_an_explicit_login() -> None:
    login = state()
    login.begin()
    with pytest.raises(XnatAuthError):
        login.finish(401, ERROR_PAGE.format("Login attempt failed"))
    assert login.credentials_refused
    for _ in range(3):  # neither a new login nor a waiting caller's re-login sends them again
        with pytest.raises(XnatAuthError, match="not sent again"):
            login.begin()
        with pytest.raises(XnatAuthError, match="not sent again"):
            login.relogin_step(login.generation, confirm=False)
    assert login.attempts == 1
    login.allow_again()  # an explicit login: once more
    login.begin()
    assert login.attempts == 2


@pytest.mark.parametrize(("status", "body", "error"), [
    (200, ERROR_PAGE.format("Something broke"), XnatServerError),  # an error page sent with 200
    (500, "Internal error", XnatServerError),
    (403, ERROR_PAGE.format("Forbidden"), XnatPermissionError),
])
def test_a_login_that_fails_otherwise_is_typed_and_not_remembered(status: int, body: str,
                                                                  error: type[XnatError]) -> None:
    login = state()
    login.begin()
    with pytest.raises(error) as info:
        login.finish(status, body)
    assert type(info.value) is error and not login.credentials_refused


def test_only_the_first_caller_that_meets_an_expiry_logs_in_again() -> None:
    login = state()
    login.established("u")
    seen = login.generation
    assert login.relogin_step(seen, confirm=False) is ReloginStep.LOGIN
    assert login.relogin_step(seen, confirm=True) is ReloginStep.CHECK  # a new cookie only: ask XNAT first
    login.established("u")  # that first caller's login
    assert login.relogin_step(seen, confirm=False) is ReloginStep.RENEWED
    assert login.relogin_step(seen, confirm=True) is ReloginStep.RENEWED


@pytest.mark.parametrize(("status", "body", "gone"), [
    (200, "User 'alice' is logged in", False),
    (200, "User 'guest' is logged in", True),
    (200, "User 'Guest' is logged in", True),
    (401, "User 'alice' is logged in", True),  # only a 200 names the user
    (200, "<html>login page</html>", True),
])
def test_the_session_is_gone_unless_xnat_names_a_user_other_than_guest(status: int, body: str, gone: bool) -> None:
    assert session_gone(status, body) is gone


@pytest.mark.parametrize(("final", "base"), [
    ("https://xnat.example.org/app/template/Login.vm", "https://xnat.example.org"),
    ("https://xnat.example.org/xnat/data/projects", "https://xnat.example.org/xnat"),
    ("http://xnat.example.org/", None),  # the same place
])
def test_a_redirected_site_url_is_cut_before_app_or_data(final: str, base: str | None) -> None:
    assert redirected_base("http://xnat.example.org", final) == base


# ---- one attempt -----------------------------------------------------------------------------------------------
def redact(text: str) -> str:
    return text.replace("SECRET", "***")


def test_a_plain_answer_is_returned_after_one_send() -> None:
    answer = ok(headers={"Content-Type": "application/json"}, body=unread)
    steps, result = run(attempt("GET", "/data/projects", 3, redact), [answer])
    assert steps == [Send()] and result is answer


def test_a_401_is_one_relogin_and_one_resend() -> None:
    steps, result = run(attempt("POST", "/data/x", 3, redact), [ok(401), True, ok(200)])
    assert steps == [Send(), Relogin(3), Send()] and result.status == 200


def test_a_401_after_the_relogin_is_an_auth_error_not_a_loop() -> None:
    with pytest.raises(XnatAuthError, match="401 even after logging in again"):
        run(attempt("GET", "/data/tokens/SECRET", 3, redact), [ok(401), True, ok(401)])


def test_a_new_session_cookie_that_xnat_says_is_still_ours_changes_nothing() -> None:
    answer = ok(replaced=True)
    steps, result = run(attempt("POST", "/data/x", 3, redact), [answer, False])
    assert steps == [Send(), Relogin(3, confirm=True)] and result is answer


@pytest.mark.parametrize(("method", "status"), [("GET", 404), ("PUT", 200), ("DELETE", 200), ("POST", 403)])
def test_served_as_guest_a_request_is_resent_when_that_is_safe(method: str, status: int) -> None:
    steps, result = run(attempt(method, "/data/x", 3, redact), [ok(status, replaced=True), True, ok(200)])
    assert steps == [Send(), Relogin(3, confirm=True), Send()] and result.status == 200


def test_served_as_guest_a_post_that_may_have_acted_is_ambiguous_and_not_resent() -> None:
    with pytest.raises(XnatServerError, match="served the request as the guest user") as info:
        run(attempt("POST", "/data/services/archive", 3, redact), [ok(200, replaced=True), True])
    assert info.value.status is None  # ambiguous: the caller looks for its effect


def test_served_as_guest_again_after_the_relogin_is_an_auth_error() -> None:
    with pytest.raises(XnatAuthError, match="even after logging in again"):
        run(attempt("GET", "/data/x", 3, redact), [ok(404, replaced=True), True, ok(404, replaced=True)])


@pytest.mark.parametrize(("status", "message", "error"), [
    (404, "Unable to find the specified experiment", XnatNotFoundError),
    (403, "Forbidden", XnatPermissionError),
    (409, "Conflict", XnatConflictError),
    (400, "Bad request", XnatBadInputError),
    (500, "FAILED: session already exists", XnatConflictError),  # XNAT 1.8.9+'s merge conflict
    (500, "Boom", XnatServerError),
])
def test_a_failed_answer_is_raised_as_its_type_with_xnats_message(status: int, message: str,
                                                                  error: type[XnatError]) -> None:
    page = ok(status, headers=HTML, body=lambda: ERROR_PAGE.format(message))
    with pytest.raises(error) as info:
        run(attempt("GET", "/data/SECRET", 1, redact), [page])
    assert type(info.value) is error and info.value.xnat_message == message
    assert info.value.path == "/data/***" and "SECRET" not in str(info.value)


def test_retry_after_is_kept_on_the_error_for_the_backoff() -> None:
    with pytest.raises(XnatServerError) as info:
        run(attempt("GET", "/data/x", 1, redact), [ok(503, headers={"Retry-After": " 7 "})])
    assert info.value.retry_after == 7  # type: ignore[attr-defined]


def test_statuses_the_caller_handles_are_returned_unread() -> None:
    answer = ok(416, body=unread)
    assert run(attempt("GET", "/f", 1, redact, ok_statuses=(206, 416)), [answer])[1] is answer


def test_an_html_error_page_sent_with_200_is_an_error_unless_pages_are_expected_or_streamed() -> None:
    page = ok(200, headers=HTML, body=lambda: ERROR_PAGE.format("An error occurred"))
    with pytest.raises(XnatServerError, match="error page with status 200"):
        run(attempt("GET", "/data/x", 1, redact), [page])
    assert run(attempt("GET", "/data/x", 1, redact, expect_html=True), [page])[1] is page
    streamed = ok(200, headers=HTML, body=unread)  # a download is never read here
    assert run(attempt("GET", "/data/x", 1, redact, stream=True), [streamed])[1] is streamed


# ---- failures of the HTTP library ------------------------------------------------------------------------------
class Broken(Exception):
    pass


class Cut(Broken):
    pass


class Refused(Broken):
    pass


class Unsendable(Exception):
    pass


class Other(Exception):
    pass


LIBRARY = LibraryErrors(any=(Broken, Unsendable, Other), broken=(Broken,), cut=(Cut,), unsendable=(Unsendable,),
                        reached=lambda exc: not isinstance(exc, Refused))


@pytest.mark.parametrize(("exc", "error", "says"), [
    (Unsendable("bad url https://x/SECRET"), XnatBadInputError, "not sent, the request is invalid"),
    (Cut("peer closed at https://x/SECRET"), XnatServerError, "cut short"),
    (Broken("reset at https://x/SECRET"), XnatServerError, "no answer from XNAT"),
    (Other("odd at https://x/SECRET"), XnatServerError, "the request failed"),
])
def test_a_library_failure_is_typed_redacted_and_chained_to_a_stand_in(exc: Exception, error: type[XnatError],
                                                                       says: str) -> None:
    failure = transport_failure("GET", "/data/SECRET", exc, LIBRARY, redact)
    assert type(failure) is error and says in str(failure) and "SECRET" not in str(failure)
    assert failure.status is None  # ambiguous: a POST may have taken effect
    cause = failure.__cause__
    assert isinstance(cause, RedactedCause) and "SECRET" not in str(cause) and type(exc).__name__ in str(cause)
    assert failure.__context__ is None and failure.__suppress_context__


def test_a_login_without_a_whole_answer_says_whether_it_reached_xnat() -> None:
    cut = login_failure("https://x", Cut("cut"), LIBRARY, redact)
    refused = login_failure("https://x", Refused("refused"), LIBRARY, redact)
    assert "cut short" in str(cut) and "could not reach XNAT at https://x" in str(refused)
    assert isinstance(refused.__cause__, RedactedCause) and not refused.__cause__.reached_server
    assert cut.__cause__.reached_server and cut.status is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("exc", "retried"), [
    (Broken("reset"), True), (Cut("cut"), True), (XnatServerError("x", status=429), True),
    (XnatServerError("x", status=502), True), (XnatServerError("x", status=503), True),
    (XnatServerError("x", status=504), True), (XnatServerError("x", status=500), False),
    (XnatServerError("x"), False), (XnatAuthError("x", status=401), False), (Unsendable("x"), False),
])
def test_only_broken_exchanges_and_transient_statuses_are_retried(exc: BaseException, retried: bool) -> None:
    assert LIBRARY.retryable(exc) is retried


def test_the_retry_policy_makes_config_retries_attempts_then_gives_up_with_the_error() -> None:
    calls = []

    def fails() -> None:
        calls.append(1)
        raise XnatServerError("busy", status=503)

    config = ClientConfig("https://x", "alice", PASSWORD, retries=3, backoff=0, backoff_max=0)
    with pytest.raises(XnatServerError, match="busy"):
        tenacity.Retrying(**retry_policy(config, LIBRARY, "GET", "/data/x", redact))(fails)
    assert len(calls) == 3


def test_the_wait_honours_retry_after_up_to_the_maximum_else_backs_off_with_jitter() -> None:
    wait = RetryWait(1.0, 10.0)

    def state_after(exc: BaseException, attempt_number: int) -> tenacity.RetryCallState:
        rs = tenacity.RetryCallState(None, None, (), {})
        rs.attempt_number = attempt_number
        rs.set_exception((type(exc), exc, None))
        return rs

    told = XnatServerError("x", status=429)
    told.retry_after = 4  # type: ignore[attr-defined]
    assert wait(state_after(told, 1)) == 4
    told.retry_after = 600  # type: ignore[attr-defined]
    assert wait(state_after(told, 1)) == 10
    for n, ceiling in ((1, 1.0), (3, 4.0), (9, 10.0)):
        assert ceiling / 2 <= wait(state_after(XnatServerError("x", status=503), n)) <= ceiling


# ---- lookups ---------------------------------------------------------------------------------------------------
EXPERIMENT = {"meta": {"xsi:type": "xnat:mrSessionData"},
              "data_fields": {"ID": "E1", "label": "S01_MR1", "project": "P1", "subject_ID": "SUBJ1"}}


def test_an_experiment_lookup_reads_the_experiment_then_its_subjects_label() -> None:
    steps, exp = run(experiment_lookup("P1", "S01_MR1"), [EXPERIMENT, {"data_fields": {"label": "S01"}}])
    assert steps == [Item("/data/projects/P1/experiments/S01_MR1"), Item("/data/projects/P1/subjects/SUBJ1")]
    assert (exp.id, exp.subject_label, exp.xsi_type) == ("E1", "S01", "xnat:mrSessionData")


def test_a_subject_that_cannot_be_read_leaves_its_label_empty() -> None:
    _, exp = run(experiment_lookup("P1", "S01_MR1"), [EXPERIMENT, XnatPermissionError("no", status=403)])
    assert exp.id == "E1" and exp.subject_label == ""


def test_an_absent_experiment_is_an_error_or_none() -> None:
    with pytest.raises(XnatNotFoundError):
        run(experiment_lookup("P1", "NOPE"), [XnatNotFoundError("absent", status=404)])
    assert run(or_none(experiment_lookup("P1", "NOPE")), [XnatNotFoundError("absent", status=404)])[1] is None
    with pytest.raises(XnatServerError):  # only absence is None
        run(or_none(experiment_lookup("P1", "X")), [XnatServerError("down", status=500)])


def test_an_experiment_path_costs_a_read_only_for_a_label_alone() -> None:
    exp = Experiment(id="E1", label="S01_MR1", project="P1", subject_id="SUBJ1", subject_label="S01",
                     xsi_type="xnat:mrSessionData", date="", uri="/data/experiments/E1")
    assert run(experiment_path_lookup("P1", exp), []) == ([], "/data/experiments/E1")
    assert run(experiment_path_lookup("P1", "S01_MR1", "S01"), []) == (
        [], "/data/projects/P1/subjects/S01/experiments/S01_MR1")
    steps, path = run(scans_lookup("P1", "S01_MR1"), [EXPERIMENT, [{"ID": "1", "type": "T1w"}]])
    assert steps == [Item("/data/projects/P1/experiments/S01_MR1"), Rows("/data/experiments/E1/scans")]
    assert [s.id for s in path] == ["1"]


def test_a_prearchive_row_that_is_not_listed_is_absent() -> None:
    uri = "/data/prearchive/projects/P1/20240101_000000000/S01_MR1"
    with pytest.raises(XnatNotFoundError, match="no such prearchive session"):
        run(prearchive_row_lookup(uri), [[]])
    assert run(or_none(prearchive_row_lookup(uri)), [[]])[1] is None
    with pytest.raises(ValueError, match="not a prearchive session"):  # before any read
        run(prearchive_row_lookup("/data/experiments/E1"), [])


def test_a_read_asks_for_json_and_parses_its_answer() -> None:
    assert Rows("/data/x", (("columns", "ID"),)).query() == {"format": "json", "columns": "ID"}
    assert Rows("/data/x").parse(b'{"ResultSet": {"Result": [{"ID": 1, "n": null}]}}') == [{"ID": "1", "n": ""}]
    assert Item("/data/x").parse('{"items": [{"meta": {"isHistory": true}}, {"data_fields": {"ID": "E1"}}]}') == {
        "data_fields": {"ID": "E1"}}
    with pytest.raises(XnatServerError, match="expected an XNAT result set"):
        Rows("/data/x").parse("<html>login</html>")
