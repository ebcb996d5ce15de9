"""One simulated participant through the real pages, as a browser would.

The visit follows the server: it always goes where it is redirected, reads each page's POST form
whole (hidden fields included), answers the field names it knows and fills the rest plausibly, so
a new step or field does not break it. Only the chat step needs the page's script protocol.
"""

import html
import random
import re
import time
from dataclasses import dataclass, field

import httpx

from studies.pilot.chat import ChatOutcome, StepFailed, chat_run
from studies.pilot.page import Form, Page, page_parse
from studies.pilot.simulator import SimulatedUser, UserSimulator, simulated_user

STEPS = ("entry", "consent", "brief", "check", "chat", "rating", "finish", "final", "done")
MAX_REDIRECTS = 10
MAX_PAGES = 30
VISITS_PER_STEP = {"brief": 3, "check": 3}
CHOICE_FIELD = re.compile(r"^(q|attention_)(\d+)$")


@dataclass(frozen=True)
class TaskInfo:
    document_type: str
    topic: str
    brief: str = ""


@dataclass(frozen=True)
class PilotPlan:
    """What every simulated participant of a run needs, read from the database up front."""

    base_url: str
    slug: str
    entry_path: str  # the signed pilot link
    tasks: dict[str, TaskInfo]
    comprehension_answers: tuple[int, ...] = ()
    attention_answers: tuple[int, ...] = ()
    seed: int = 0
    frame_timeout: float = 180.0
    http_timeout: float = 30.0


@dataclass
class ParticipantRun:
    """What happened to one simulated participant."""

    index: int
    completed: bool = False
    step: str = "entry"
    errors: list[tuple[str, str]] = field(default_factory=list)
    chat: ChatOutcome = field(default_factory=ChatOutcome)
    completion_code: str = ""
    seconds: float = 0.0


@dataclass
class Visit:
    plan: PilotPlan
    http: httpx.AsyncClient
    simulator: UserSimulator
    rng: random.Random
    run: ParticipantRun
    user: SimulatedUser | None = None

    async def go(self) -> None:
        response = await self._request("GET", self.plan.entry_path)
        visits: dict[str, int] = {}
        for _ in range(MAX_PAGES):
            step = self._step_of(response)
            if step == "done":
                self.run.step = "done"
                self.run.completion_code = page_parse(response.text).text("completion-code")
                self.run.completed = True
                return
            page = page_parse(response.text)
            if step not in STEPS or response.status_code >= 400:
                detail = page.notice() or f"HTTP {response.status_code} at {response.url.path}"
                raise StepFailed(self.run.step, detail)
            visits[step] = visits.get(step, 0) + 1
            if visits[step] > VISITS_PER_STEP.get(step, 1):
                raise StepFailed(step, f"the page came back again: {page.notice() or 'no message'}")
            self.run.step = step
            response = await self._answer(step, page, response)
        raise StepFailed(self.run.step, "too many pages")

    async def _answer(self, step: str, page: Page, response: httpx.Response) -> httpx.Response:
        if step == "entry":
            raise StepFailed("entry", page.notice() or "the entry page did not move on")
        if step == "chat":
            return await self._chat(page, response)
        form = self._form(page, response, step)
        answers = {
            "consent": lambda: {"choice": "agree"},
            "brief": lambda: self._brief(form, response.text),
            "check": lambda: self._choices(form, self.plan.comprehension_answers, "q"),
            "final": lambda: self._final(form),
        }.get(step, dict)()
        return await self._submit(form, answers, response)

    def _form(self, page: Page, response: httpx.Response, step: str) -> Form:
        form = page.post_form(response.url.path)
        if form is None:
            raise StepFailed(step, "the page has no form to submit")
        return form

    async def _submit(
        self, form: Form, answers: dict[str, str], response: httpx.Response
    ) -> httpx.Response:
        data = form.defaults()
        for name in form.names():
            if name not in data and name not in answers:
                choices = form.choices(name)
                data[name] = choices[len(choices) // 2] if choices else self._filler()
        data.update(answers)
        action = form.action or str(response.url)
        return await self._request("POST", action, data=data, referer=str(response.url))

    def _brief(self, form: Form, source: str) -> dict[str, str]:
        topics = form.choices("task")
        if topics:
            choice = self.rng.choice(topics)
            self._become(self.plan.tasks.get(choice))
            return {"task": choice}
        if self.user is None:  # the topic was given, not chosen: find it on the page
            shown = [t for t in self.plan.tasks.values() if html.escape(t.topic) in source]
            self._become(shown[0] if shown else None)
        assert self.user is not None
        goal = self.user.goal
        texts = [goal, *self.user.details, f"I am {self.user.persona}."]
        names = [n for n in form.names() if CHOICE_FIELD.match(n) and not form.choices(n)]
        return {name: texts[i % len(texts)] for i, name in enumerate(names)}

    def _become(self, task: TaskInfo | None) -> None:
        task = task or TaskInfo("document", "a topic of my choice")
        self.user = simulated_user(
            document_type=task.document_type, topic=task.topic, brief=task.brief, rng=self.rng
        )

    def _choices(self, form: Form, correct: tuple[int, ...], prefix: str) -> dict[str, str]:
        """Answer numbered multiple-choice fields with the right choice index where it is known."""
        answers = {}
        for name in form.names():
            match = CHOICE_FIELD.match(name)
            choices = form.choices(name)
            if match and match.group(1) == prefix and choices:
                index = int(match.group(2))
                wanted = str(correct[index]) if index < len(correct) else choices[0]
                answers[name] = wanted if wanted in choices else choices[0]
        return answers

    def _final(self, form: Form) -> dict[str, str]:
        assert self.user is not None
        replies = self.run.chat.replies
        document = replies[-1] if replies else ""
        answers = {
            "document_text": document.strip()
            or f"My {self.user.document_type} on {self.user.topic}.",
            "strengths": "It answered quickly and stayed on my topic.",
            "weaknesses": "It could ask me more about what I wanted.",
        }
        for name in ("document_quality", "overall_interaction"):
            choices = form.choices(name)
            if choices:
                answers[name] = self.rng.choice(choices[len(choices) // 2 :])
        return answers | self._choices(form, self.plan.attention_answers, "attention_")

    async def _chat(self, page: Page, response: httpx.Response) -> httpx.Response:
        if self.user is None:
            self._become(None)
        assert self.user is not None
        chat = page.attrs_by_id.get("chat", {})
        ws_path = chat.get("data-ws-path") or f"/ws/s/{self.plan.slug}/chat/"
        origin = _origin(httpx.URL(self.plan.base_url))
        ws_url = re.sub(r"^http", "ws", origin) + ws_path
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.http.cookies.jar)
        await chat_run(
            ws_url=ws_url,
            origin=origin,
            cookies=cookies,
            simulator=self.simulator,
            user=self.user,
            frame_timeout=self.plan.frame_timeout,
            score=self.rng.randint(5, 9),
            outcome=self.run.chat,
        )
        self.run.step = "finish"
        form = page.post_form(f"/s/{self.plan.slug}/finish/")
        if form is None:
            raise StepFailed("finish", "the chat page has no finish form")
        finished = await self._submit(form, {}, response)
        if self._step_of(finished) == "chat":
            raise StepFailed("finish", page_parse(finished.text).notice() or "finish refused")
        return finished

    def _filler(self) -> str:
        user = self.user
        return f"I am {user.persona}." if user else "No comment."

    def _step_of(self, response: httpx.Response) -> str:
        prefix = f"/s/{self.plan.slug}/"
        path = response.url.path
        if not path.startswith(prefix):
            return "elsewhere"
        return path[len(prefix) :].strip("/") or "entry"

    async def _request(
        self, method: str, url: str, *, data: dict | None = None, referer: str | None = None
    ) -> httpx.Response:
        """One request, following same-site redirects; a redirect elsewhere ends the visit."""
        origin = _origin(httpx.URL(self.plan.base_url))
        for _ in range(MAX_REDIRECTS):
            headers = {"Referer": referer} if referer else {}
            try:
                response = await self.http.request(method, url, data=data, headers=headers)
            except httpx.HTTPError as exc:
                raise StepFailed(self.run.step, f"{method} {url}: {exc!r}") from exc
            if not response.is_redirect:
                return response
            target = response.url.join(response.headers["location"])
            if _origin(target) != origin:  # the recruiting platform: the visit ends here
                return response
            method, url, data, referer = "GET", str(target), None, None
        raise StepFailed(self.run.step, "too many redirects")


def _origin(url: httpx.URL) -> str:
    default = {"http": 80, "https": 443}.get(url.scheme)
    port = f":{url.port}" if url.port and url.port != default else ""
    return f"{url.scheme}://{url.host}{port}"


async def participant_run(plan: PilotPlan, index: int, simulator: UserSimulator) -> ParticipantRun:
    """Take simulated participant `index` through the study; never raises for a failed step."""
    run = ParticipantRun(index)
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=plan.base_url, timeout=plan.http_timeout, follow_redirects=False
    ) as http:
        visit = Visit(plan, http, simulator, random.Random(f"{plan.seed}:{index}"), run)
        try:
            await visit.go()
        except StepFailed as exc:
            run.errors.append((exc.step, exc.message))
        except Exception as exc:  # a bug in the driver is reported against its step, not raised
            run.errors.append((run.step, f"driver error: {exc!r}"))
    # Replies that failed and then succeeded on retry: the participant went on, but they count.
    run.errors[:0] = [(e.step, e.message) for e in run.chat.errors]
    run.seconds = time.monotonic() - started
    return run
