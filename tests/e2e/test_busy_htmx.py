"""The busy page reaches a participant whose htmx request (the topic choice) got no database
connection in time: htmx swaps no error response by default, so the click seemed to do nothing."""

from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from playwright.sync_api import Route, expect

from tests.factories import ModelEndpointFactory, three_arm_study
from webapp.busy import busy_response


def _busy_for(route: Route, csrf_cookie: str) -> None:
    """Answer the intercepted htmx POST as the server does when no connection came in time."""
    request = RequestFactory().post(
        urlsplit(route.request.url).path,
        data=route.request.post_data,
        content_type="application/x-www-form-urlencoded",
        HTTP_HX_REQUEST="true",
    )
    request.META["CSRF_COOKIE"] = csrf_cookie  # as CsrfViewMiddleware sets it from the cookie
    request.user = AnonymousUser()
    response = busy_response(request)
    headers = {k: v for k, v in response.items() if k.lower() != "content-length"}
    route.fulfill(status=response.status_code, headers=headers, body=response.content)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_a_busy_topic_choice_shows_the_busy_page_and_sends_the_choice_again(browsing):
    study = three_arm_study(endpoint=ModelEndpointFactory())
    page = browsing.page
    page.goto(f"/s/{study.slug}/?PROLIFIC_PID=busy1&STUDY_ID=s&SESSION_ID=x")
    page.get_by_role("button", name="I agree").click()
    page.locator('input[name="task"]').first.check()

    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    page.route("**/brief/", lambda route: _busy_for(route, csrf), times=1)
    page.get_by_role("button", name="Continue").click()

    expect(page.get_by_role("heading", name="Many people are arriving at once")).to_be_visible()
    page.get_by_role("button", name="Send again").click()
    expect(page.locator("#brief-step textarea").first).to_be_visible()
    assert browsing.errors == []
