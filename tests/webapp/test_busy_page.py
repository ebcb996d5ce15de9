"""The busy page's own links and form stay on this site, whatever path the request came with."""

import re

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory

from webapp.busy import busy_response

pytestmark = pytest.mark.django_db

# "//host/..." is a path to the server but a scheme-relative URL to a browser: echoed into
# href/action it would send the participant (and, for a POST, a fresh CSRF token and the
# form's fields) to another host.
SCHEME_RELATIVE = ["//evil.example/consent", "///evil.example/consent"]


def _request(method: str, path: str):
    factory = RequestFactory()
    # PATH_INFO as the server hands it over (RequestFactory would read "//host" as a host).
    if method == "POST":
        request = factory.post("/", {"answer": "yes"}, PATH_INFO=path)
    else:
        request = factory.get("/", PATH_INFO=path)
    request.user = AnonymousUser()
    return request


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", SCHEME_RELATIVE)
def test_the_busy_page_never_points_to_another_host(method: str, path: str):
    response = busy_response(_request(method, path))

    assert response.status_code == 503
    html = response.content.decode()
    assert not re.search(r'(href|action)="//', html)


def test_the_busy_form_is_sent_again_to_the_same_address_with_the_same_fields():
    response = busy_response(_request("POST", "/s/abc/consent?x=1"))

    html = response.content.decode()
    assert 'method="post"' in html
    assert 'name="answer" value="yes"' in html
    assert 'name="csrfmiddlewaretoken"' in html
